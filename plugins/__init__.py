"""negprompt's built-in plugins.

They are registered through this package's own ``negprompt`` entry points
(see pyproject.toml), exactly as a third-party plugin would be; the core never imports them.
"""
