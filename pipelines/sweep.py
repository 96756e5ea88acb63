"""DVC stage `sweep`: runs `radclip sweep` (logic in the radclip library)."""

from radclip.cli import run_stage

if __name__ == "__main__":
    run_stage("sweep")
