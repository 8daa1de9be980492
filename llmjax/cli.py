"""`llmjax` console entry point: dispatches `llmjax <command> ...` to a subcommand module.

Each subcommand module exposes `main(argv: list[str]) -> int`. Modules are imported
lazily so that `llmjax data ...` never pays for compiling models and vice versa.
"""

from __future__ import annotations

import importlib
import sys

from llmjax.errors import RunFailed, UserError

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("llmjax.data.cli", "prepare / sample / stats of datasets"),
    "train": ("llmjax.train.cli", "train a model from a config"),
    "info": ("llmjax.train.info", "parameter counts, FLOPs/token and compiled memory of a config"),
    "sweep": ("llmjax.sweep.cli", "run every point of a config's get_sweep(), resumably"),
    "launch": ("llmjax.launch", "gcloud TPU VM commands or a GKE JobSet for a run or sweep point"),
    "results": ("llmjax.sweep.results", "gather a sweep's runs into results.csv and curves.csv"),
    "report": ("llmjax.report.cli", "scaling-law fits, plots and report.md of a sweep"),
    "probe": ("llmjax.eval.cli", "few-shot probes, ICL score and induction heads of a run"),
    "generate": ("llmjax.generate.cli", "continue prompts with a run's model (KV-cache decoding)"),
    "serve": ("llmjax.generate.server", "an OpenAI-compatible completions server for a run"),
    "finetune": ("llmjax.finetune.cli", "fine-tune a run: causal LM or classification, full or "
                 "LoRA"),
    "convert": ("llmjax.convert", "Hugging Face GPT-2/Llama directories <-> llmjax runs"),
}


def _usage() -> str:
    lines = ["usage: llmjax <command> [flags]", "", "commands:"]
    lines += [f"  {name:<8} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; choose from {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    try:
        return int(module.main(rest) or 0)
    except (UserError, RunFailed) as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except Exception as e:
        if "jax" in sys.modules:  # several processes: a dead peer is one line, exit 1, not a hang
            from llmjax.distributed import exit_on_peer_failure

            exit_on_peer_failure(e)
        raise


if __name__ == "__main__":
    sys.exit(main())
