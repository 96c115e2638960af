"""Package discovery, the one thing pyproject.toml cannot say: every package under negprompt/ and
negprompt_cli/ is found (a new subpackage cannot be left out of the wheel), and the built-in plugins in
plugins/ install as ``negprompt_plugins`` (a top-level ``plugins`` package is a name other distributions
also install). Everything else is in pyproject.toml."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["negprompt", "negprompt_cli", "negprompt_cli.*"]), "negprompt_plugins"],
    package_dir={"negprompt_plugins": "plugins"},
)
