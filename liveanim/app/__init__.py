"""The application: the command line (cli/) and the desktop window (ui/) over the library below.
Nothing below `liveanim.app` imports it."""
