"""A client for `python -m toolkit serve` (httpx): classify texts or images, generate, translate.

    python examples/serve_client.py predict "a gripping, funny film" "dull and far too long"
    python examples/serve_client.py predict --image cat.png dog.jpg
    python examples/serve_client.py generate "ROMEO:" --max-new-tokens 40      # streams tokens as they come
    python examples/serve_client.py translate "A dog runs." "Two cats sleep."

--url points at the server (default http://127.0.0.1:8000). It asks GET /v1/model first and says what it talks to.
"""
from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path

import httpx


def refused(r: httpx.Response) -> int:
    """Print the server's one-line error (it names the field) and return the exit code."""
    r.read()
    print(f"{r.status_code}: {r.json()['error']}", file=sys.stderr)
    return 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("endpoint", choices=["predict", "generate", "translate"])
    p.add_argument("inputs", nargs="+", help="texts (or image files with --image; one prompt for generate)")
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--image", action="store_true", help="inputs are image files (sent as base64)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.0)
    args = p.parse_args()

    with httpx.Client(base_url=args.url, timeout=120) as client:
        model = client.get("/v1/model").json()
        print(f"# {model['task']} · variant {model['variant']} of {model['run']} · {model['runtime']}", file=sys.stderr)
        if args.endpoint == "predict":
            inputs = ([base64.b64encode(Path(f).read_bytes()).decode() for f in args.inputs] if args.image
                      else args.inputs)
            r = client.post("/v1/predict", json={"inputs": inputs})
            if r.status_code != 200:
                return refused(r)
            for name, pred in zip(args.inputs, r.json()["predictions"]):
                print(f"{pred['label']}\t{pred['score']:.3f}\t{name}")
            return 0
        if args.endpoint == "generate":
            body = {"prompt": " ".join(args.inputs), "max_new_tokens": args.max_new_tokens,
                    "temperature": args.temperature, "stream": True}
            with client.stream("POST", "/v1/generate", json=body) as r:
                if r.status_code != 200:
                    return refused(r)
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        event = json.loads(line[6:])
                        print("" if event.get("done") else event["text"], end="\n" if event.get("done") else "",
                              flush=True)
            return 0
        r = client.post("/v1/translate", json={"inputs": args.inputs, "max_new_tokens": args.max_new_tokens})
        if r.status_code != 200:
            return refused(r)
        for src, out in zip(args.inputs, r.json()["translations"]):
            print(f"{src}\t{out['text']}")
        return 0


if __name__ == "__main__":
    sys.exit(main())
