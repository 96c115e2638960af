"""The stages: each one command's work over loaded things. Stages import only the core (negprompt_cli/*),
never each other; the composers (cli, demo, pipeline) chain them."""
