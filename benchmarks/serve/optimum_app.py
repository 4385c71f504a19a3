"""What users write today: a plain FastAPI app calling Optimum's ORTModelForSeq2SeqLM.generate, one request
at a time (a lock around generate; ONNX Runtime uses every core for each call). Same request and answer
shape as `ortdecode serve`'s POST /generate, no streaming.

    python -m benchmarks.serve.optimum_app --model EXPORT_DIR [--port 0]
"""

from __future__ import annotations

import argparse
import sys
import threading

import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel


class Body(BaseModel):
    inputs: str
    parameters: dict = {}


def create_app(model_dir: str) -> FastAPI:
    import torch
    from optimum.onnxruntime import ORTModelForSeq2SeqLM
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = ORTModelForSeq2SeqLM.from_pretrained(model_dir, provider="CPUExecutionProvider", use_merged=False)
    lock = threading.Lock()
    app = FastAPI()

    @app.get("/health")
    def health():
        return {"status": "ready"}

    @app.post("/generate")
    def generate(body: Body):
        inputs = tokenizer(body.inputs, return_tensors="pt")
        with lock, torch.inference_mode():
            output = model.generate(**inputs, **body.parameters)
        tokens = output[0, 1:]  # one sequence: no padding
        return {"generated_text": tokenizer.decode(tokens, skip_special_tokens=True),
                "details": {"generated_tokens": len(tokens)}}

    return app


class _Server(uvicorn.Server):
    async def startup(self, sockets=None):
        await super().startup(sockets)
        host, port = self.servers[0].sockets[0].getsockname()[:2]
        print(f"optimum app: listening on http://{host}:{port}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    app = create_app(args.model)
    _Server(uvicorn.Config(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)).run()


if __name__ == "__main__":
    main()
