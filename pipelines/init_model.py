"""DVC stage `init_model`: runs `radclip init-model` (logic in the radclip library)."""

from radclip.cli import run_stage

if __name__ == "__main__":
    run_stage("init_model")
