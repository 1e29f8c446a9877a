"""`optimum-cli onnx23 serve MODEL`: an OpenAI-compatible server with continuous batching.

Only argparse at import time (optimum-cli imports every register module on start-up); arguments
are checked before the server's dependencies are imported.
"""

from __future__ import annotations

import sys
from argparse import ArgumentParser

from optimum.commands.base import BaseOptimumCLICommand, CommandInfo

__all__ = ["ServeCommand"]


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError(value)
    return number


class ServeCommand(BaseOptimumCLICommand):
    COMMAND = CommandInfo(name="serve", help="Serve an exported model over OpenAI's HTTP API, with continuous batching.")

    @staticmethod
    def parse_args(parser: ArgumentParser):
        parser.add_argument("model", help="An exported folder, its Hub layout, or a Hub id (as from_pretrained takes).")
        parser.add_argument("--host", default="127.0.0.1", help="Address to bind (default 127.0.0.1: this machine only).")
        parser.add_argument("--port", type=int, default=8000, help="Port to bind (default 8000).")
        parser.add_argument("--max-num-seqs", type=_positive, default=16, help="Rows decoded together (default 16).")
        parser.add_argument("--max-queue", type=int, default=64, help="Waiting requests before 429 (default 64).")
        parser.add_argument("--max-model-len", type=_positive, default=None, help="Prompt + completion limit (default: the model's context).")
        parser.add_argument("--prefill-chunk", type=_positive, default=256, help="Prompt tokens prefilled per step (default 256).")
        parser.add_argument(
            "--max-num-batched-tokens", type=_positive, default=64,
            help="Tokens per step while rows decode: one per decoding row, the rest for a prefill chunk (default 64; "
            "lower: steadier inter-token latency, higher: faster time to first token).",
        )
        parser.add_argument(
            "--kv-cache", choices=("auto", "slots", "dynamic"), default="auto",
            help="Rows' KV cache: fixed slots, each row attending over its own length (onnxruntime CPU; needs every "
            "attention layer fused), or the dynamic cache (every family and provider). auto: slots where they apply.",
        )
        parser.add_argument("--provider", default="CPUExecutionProvider", help="onnxruntime execution provider; its backend variant is selected as sessions do.")
        parser.add_argument("--served-model-name", default=None, help="The model name clients send (default: the folder's name).")
        parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))

    def run(self):
        args = self.args
        if not 0 < args.port < 65536:
            print(f"error: --port must be 1-65535, got {args.port}.", file=sys.stderr)
            sys.exit(2)
        if args.max_queue < 0:
            print(f"error: --max-queue must be >= 0, got {args.max_queue}.", file=sys.stderr)
            sys.exit(2)
        try:
            import uvicorn

            from optimum_onnx23.serving.app import ServerConfig, create_app
        except ImportError as error:
            print(f"error: serving needs its extra ({error.name} is missing): pip install 'optimum-onnx23[serve]'.", file=sys.stderr)
            sys.exit(1)
        import logging

        logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
        config = ServerConfig(
            model=args.model, served_model_name=args.served_model_name, max_num_seqs=args.max_num_seqs,
            max_queue=args.max_queue, max_model_len=args.max_model_len, provider=args.provider,
            prefill_chunk=args.prefill_chunk, max_num_batched_tokens=args.max_num_batched_tokens, kv_cache=args.kv_cache,
        )
        app = create_app(config)

        class Server(uvicorn.Server):
            def handle_exit(self, sig, frame):
                # SIGTERM / Ctrl-C: admit nothing more at once; uvicorn then stops accepting
                # connections and waits for the open requests, which the engine finishes.
                engine = app.state.onnx23.engine
                if engine is not None:
                    engine.drain()
                super().handle_exit(sig, frame)

        server = Server(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=600))
        server.run()
