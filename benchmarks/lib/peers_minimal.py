"""Peer (b) of `benchmarks.peers`: what a user would write instead of this bundle.

    python -m benchmarks.lib.peers_minimal --models STORE --port 18500

One uvicorn process running the same onnxruntime pipeline in process (`export.pipeline.Pipeline`:
classifier, expert edge stages with early exit, cloud segment when no branch is confident) behind
one Starlette endpoint, `POST /v1/classify?threshold=`. No TorchServe, no second machine, no
limits beyond uvicorn's defaults: the fair baseline for the front door's own cost. Loopback only.
"""

from __future__ import annotations

import argparse
import sys

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from core.cli import run_cli
from core.imaging import decode_image
from export.pipeline import Pipeline


def make_app(models: str) -> Starlette:
    pipeline = Pipeline(models)

    async def classify(request: Request) -> JSONResponse:
        body = await request.body()
        try:
            threshold = float(request.query_params.get("threshold", "0.8"))
            answer = pipeline.infer([decode_image(body)], threshold)[0]
        except ValueError as exc:
            return JSONResponse({"error": str(exc)[:200]}, status_code=400)
        answer.pop("distortion_probabilities", None)
        return JSONResponse(answer)

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[
            Route("/v1/classify", classify, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ]
    )


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.lib.peers_minimal", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--models", required=True, help="model store or export folder")
    p.add_argument("--port", type=int, default=18500)
    return p


def main(args: argparse.Namespace) -> int:
    uvicorn.run(
        make_app(args.models),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        loop="uvloop",
        http="httptools",
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser))
