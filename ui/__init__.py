"""The PyQt6 desktop app that `python main.py` starts (see ui/app.py)."""
