"""DVC stage `validate`: runs `radclip validate` (logic in the radclip library)."""

from radclip.cli import run_stage

if __name__ == "__main__":
    run_stage("validate")
