"""negprompt's built-in plugins (installed as the package ``negprompt_plugins``).

They are registered through this distribution's own ``negprompt`` entry points (see
pyproject.toml), exactly as a third-party plugin would be (a source checkout is installed with
``pip install -e .``). The core never imports them.
"""
