"""Redis storage: key names (keys.py) and the Lua scripts that are the only state machine."""
