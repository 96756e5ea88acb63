"""DVC stage `ablate`: runs `radclip ablate` (logic in the radclip library)."""

from radclip.cli import run_stage

if __name__ == "__main__":
    run_stage("ablate")
