"""The PyQt6 desktop app that `python main.py` starts (see liveanim/app/ui/app.py)."""
