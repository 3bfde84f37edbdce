"""An OpenAI-compatible streaming server around Hugging Face transformers' `generate()`, for orch's
`transformers` engine (engines/hf_transformers.py). It runs with the python of that engine's own
environment and is never imported by orch; it lives in a folder of its own so that running it puts
no orch module on its import path.

Why not `transformers serve`: in transformers 5.19.0 (cli/serving/utils.py, _build_generation_config)
a request's settings reach generate() only as a JSON `generation_config`. Prompt lookup could be set
that way, but an assistant model is a loaded model object, which JSON cannot carry, and serve has
no flag that loads one; nor does it report what was drafted or accepted. This server loads the
target and the assistant once at start, fixes the draft schedule so that depth means depth, and
reports per request what generate() drafted and accepted in vLLM's per-request shape
(`metrics.speculative_decoding` on the last event), which orch already reads.

    python transformers_generate.py --model DIR [--method none|assistant|prompt-lookup]
        [--n-spec N] [--assistant DIR] [--served-model-name NAME] [--host H] [--port P]
        [--dtype float32] [--threads N] [--max-matching-ngram N]

Requests run one at a time (assisted generation takes a batch of one); the others wait their turn
in arrival order. A request's draft counts come from wrapping its candidate generator
(GenerationMixin._get_candidate_generator, a private method: keep the transformers pin in step).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from aiohttp import web
from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

MAX_BODY = 8 << 20


class BadRequest(Exception):
    pass


class Counts:
    """What one request's candidate generator drafted and how much of it the target accepted."""

    def __init__(self):
        self.steps = 0  # verification steps that had a draft
        self.drafted = 0
        self.accepted = 0
        self.histogram: list[int] = []  # steps by the number of drafts they accepted
        self._last = 0

    def drafted_step(self, n: int) -> None:
        self._last = n

    def verified(self, matches: int) -> None:
        if self._last <= 0:
            return  # a step with nothing to verify (prompt lookup found no match): plain decoding
        matches = min(int(matches), self._last)
        self.steps += 1
        self.drafted += self._last
        self.accepted += matches
        self.histogram += [0] * (matches + 1 - len(self.histogram))
        self.histogram[matches] += 1
        self._last = 0

    def as_metrics(self) -> dict:
        return {"num_spec_steps": self.steps, "num_draft_tokens": self.drafted,
                "num_accepted_draft_tokens": self.accepted, "acceptance_histogram": self.histogram}


def instrument(model, counts_of):
    """Wrap model._get_candidate_generator so every candidate generator it makes reports to the
    Counts of the request being generated (counts_of())."""
    original = model._get_candidate_generator

    def wrapped(*args, **kwargs):
        gen = original(*args, **kwargs)
        get, update = gen.get_candidates, gen.update_candidate_strategy

        def get_candidates(input_ids, *a, **kw):
            out = get(input_ids, *a, **kw)
            counts_of().drafted_step(out[0].shape[1] - input_ids.shape[1])
            return out

        def update_candidate_strategy(input_ids, scores, num_matches, *a, **kw):
            counts_of().verified(int(num_matches))
            return update(input_ids, scores, num_matches, *a, **kw)

        gen.get_candidates, gen.update_candidate_strategy = get_candidates, update_candidate_strategy
        return gen

    model._get_candidate_generator = wrapped


class Stream(BaseStreamer):
    """Decoded text pieces onto an asyncio queue, from the generation thread. generate() puts the
    prompt first (skipped), then each step's accepted tokens."""

    def __init__(self, tokenizer, loop, queue):
        self.tokenizer, self.loop, self.queue = tokenizer, loop, queue
        self.ids: list[int] = []
        self.sent = 0
        self.prompt_seen = False

    def put(self, value):
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.ids += value.reshape(-1).tolist()
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return  # a character cut between tokens: wait for the rest of it
        self._send(text)

    def end(self):
        self._send(self.tokenizer.decode(self.ids, skip_special_tokens=True))

    def _send(self, text: str) -> None:
        piece, self.sent = text[self.sent:], max(self.sent, len(text))
        if piece:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (piece, len(self.ids)))


class Cancelled(StoppingCriteria):
    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class Server:
    def __init__(self, args):
        self.args = args
        if args.threads:
            torch.set_num_threads(args.threads)
        dtype = getattr(torch, args.dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(args.model)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).to(self.device).eval()
        self.max_len = getattr(self.model.config.get_text_config(), "max_position_embeddings", None)
        self.assistant = self.assistant_tokenizer = None
        if args.method == "assistant":
            self.assistant = AutoModelForCausalLM.from_pretrained(args.assistant, dtype=dtype).to(self.device).eval()
            # A fixed schedule with no confidence cut: every step drafts n_spec tokens.
            gc = self.assistant.generation_config
            gc.num_assistant_tokens, gc.num_assistant_tokens_schedule = args.n_spec, "constant"
            gc.assistant_confidence_threshold = 0.0
            tok = AutoTokenizer.from_pretrained(args.assistant)
            # generate()'s own rule (GenerationMixin._validate_assistant): the same vocab_size means
            # one vocabulary; another needs both tokenizers, and generate() translates.
            size = lambda m: m.config.get_text_config().vocab_size  # noqa: E731
            if size(self.assistant) != size(self.model):
                self.assistant_tokenizer = tok
            elif tok.get_vocab() != self.tokenizer.get_vocab():
                raise SystemExit(f"the assistant {args.assistant} has the target's vocab_size but another "
                                 "vocabulary; generate() would take its token ids as the target's")
        self.counts = Counts()
        instrument(self.model, lambda: self.counts)
        self.pool = ThreadPoolExecutor(max_workers=1)  # one generation at a time, in arrival order
        self.name = args.served_model_name or args.model

    def describe(self) -> str:
        across = " (different tokenizers: generate() translates)" if self.assistant_tokenizer else ""
        return (f"model {self.args.model} ({self.args.dtype}), method {self.args.method}, n_spec {self.args.n_spec}"
                + (f", assistant {self.args.assistant}{across}" if self.assistant is not None else ""))

    def speculation_kwargs(self) -> dict:
        a = self.args
        if a.method == "assistant":
            kw = {"assistant_model": self.assistant}
            if self.assistant_tokenizer is not None:
                kw |= {"tokenizer": self.tokenizer, "assistant_tokenizer": self.assistant_tokenizer}
            return kw
        if a.method == "prompt-lookup":
            return {"prompt_lookup_num_tokens": a.n_spec, "max_matching_ngram_size": a.max_matching_ngram}
        return {}

    def check(self, input_ids, req) -> None:
        """What generate() would fail on or run for hours with: refused before it runs."""
        if self.max_len and input_ids.shape[1] + req["max_tokens"] > self.max_len:
            raise BadRequest(f"prompt ({input_ids.shape[1]} tokens) plus max_tokens ({req['max_tokens']}) passes "
                             f"the model's {self.max_len} positions")
        if req["temperature"] > 0 and self.assistant_tokenizer is not None:
            # Sampling across vocabularies prunes the assistant's LM head in place, for good.
            raise BadRequest("temperature > 0 with an assistant of another tokenizer is not served; use 0")

    def generate(self, input_ids, req, stream, cancel) -> tuple[list[int], dict]:
        self.counts = Counts()
        input_ids = input_ids.to(self.device)
        kwargs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
                  "max_new_tokens": req["max_tokens"], "streamer": stream,
                  "stopping_criteria": StoppingCriteriaList([Cancelled(cancel)]),
                  "pad_token_id": self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
                  **self.speculation_kwargs()}
        if req["ignore_eos"]:
            kwargs["min_new_tokens"] = req["max_tokens"]
        if req["temperature"] > 0:
            torch.manual_seed(req["seed"])
            kwargs |= {"do_sample": True, "temperature": req["temperature"], "top_p": 1.0, "top_k": 0}
        else:
            kwargs |= {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        with torch.inference_mode():
            out = self.model.generate(**kwargs)
        speculative = self.args.method != "none"
        return out[0, input_ids.shape[1]:].tolist(), (self.counts.as_metrics() if speculative else {})

    def encode(self, body: dict, chat: bool):
        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise BadRequest("messages must be a non-empty list")
            if not self.tokenizer.chat_template:
                raise BadRequest("this model has no chat template; send a prompt to /v1/completions")
            try:
                ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True,
                                                         return_tensors="pt")["input_ids"]
            except Exception as exc:  # the template's own complaint (jinja, a malformed message)
                raise BadRequest(f"the chat template refused these messages: {type(exc).__name__}: {exc}"[:300]) from exc
        else:
            prompt = body.get("prompt")
            if not isinstance(prompt, str) or not prompt:
                raise BadRequest("prompt must be a non-empty string")
            ids = self.tokenizer(prompt, return_tensors="pt").input_ids
        return ids


def _request(body) -> dict:
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    max_tokens = body.get("max_tokens", 16)
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 1 <= max_tokens <= 1 << 20:
        raise BadRequest("max_tokens must be a whole number from 1")
    temperature = body.get("temperature", 0.0)
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not 0 <= temperature <= 100:
        raise BadRequest("temperature must be a number from 0")
    seed = body.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise BadRequest("seed must be a whole number")
    return {"max_tokens": max_tokens, "temperature": float(temperature), "seed": seed % (1 << 63),
            "stream": body.get("stream") is True, "ignore_eos": body.get("ignore_eos") is True}


def _chunk(rid, created, name, chat, piece=None, finish=None, usage=None, spec=None) -> dict:
    choice = {"index": 0, "finish_reason": finish}
    if chat:
        choice["delta"] = {"content": piece} if piece else {}
    else:
        choice["text"] = piece or ""
    obj = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion", "created": created,
           "model": name, "choices": [choice]}
    if usage is not None:
        obj["usage"] = usage
    if spec:
        obj["metrics"] = {"speculative_decoding": spec}
    return obj


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def make_app(server: Server) -> web.Application:
    async def health(_):
        return web.json_response({"status": "ok"})

    async def models(_):
        return web.json_response({"object": "list", "data": [{"id": server.name, "object": "model"}]})

    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/completions", lambda r: _completions(server, r, chat=False))
    app.router.add_post("/v1/chat/completions", lambda r: _completions(server, r, chat=True))
    return app


class Reply:
    """One request's answer: what its response, or every event of its stream, says about it."""

    def __init__(self, name: str, chat: bool, max_tokens: int, prompt_n: int):
        self.rid, self.created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        self.name, self.chat, self.max_tokens, self.prompt_n = name, chat, max_tokens, prompt_n

    def finish(self, ids: list[int]) -> str:
        return "length" if len(ids) >= self.max_tokens else "stop"

    def piece(self, piece: str, n: int) -> dict:
        return _chunk(self.rid, self.created, self.name, self.chat, piece, usage=_usage(self.prompt_n, n))

    def last(self, ids: list[int], spec: dict) -> dict:
        return _chunk(self.rid, self.created, self.name, self.chat, finish=self.finish(ids),
                      usage=_usage(self.prompt_n, len(ids)), spec=spec)

    def whole(self, text: str, ids: list[int], spec: dict) -> dict:
        choice = ({"message": {"role": "assistant", "content": text}} if self.chat else {"text": text})
        return {"id": self.rid, "object": "chat.completion" if self.chat else "text_completion",
                "created": self.created, "model": self.name,
                "choices": [{"index": 0, "finish_reason": self.finish(ids), **choice}],
                "usage": _usage(self.prompt_n, len(ids)),
                **({"metrics": {"speculative_decoding": spec}} if spec else {})}


async def _completions(server: Server, request: web.Request, chat: bool) -> web.StreamResponse:
    try:
        body = json.loads(await request.read())
        req = _request(body)
        input_ids = server.encode(body, chat)
        server.check(input_ids, req)
    except (ValueError, BadRequest) as exc:
        return web.json_response({"error": {"message": str(exc), "type": "invalid_request_error"}}, status=400)
    loop, cancel = asyncio.get_running_loop(), threading.Event()
    queue: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
    reply = Reply(server.name, chat, req["max_tokens"], input_ids.shape[1])
    job = loop.run_in_executor(server.pool, server.generate, input_ids, req,
                               Stream(server.tokenizer, loop, queue) if req["stream"] else None, cancel)
    if not req["stream"]:
        try:
            ids, spec = await job
        finally:
            cancel.set()  # a client that hung up stops its generation too
        return web.json_response(reply.whole(server.tokenizer.decode(ids, skip_special_tokens=True), ids, spec))
    return await _stream(request, reply, job, queue, cancel)


async def _stream(request: web.Request, reply: Reply, job: asyncio.Future[tuple[list[int], dict]],
                  queue: asyncio.Queue[tuple[str, int]], cancel: threading.Event) -> web.StreamResponse:
    """The pieces of text as generation makes them, then the last event with the finish reason
    and the draft counts."""
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    try:
        while True:
            getter = asyncio.ensure_future(queue.get())
            racing: set[asyncio.Future[Any]] = {getter, job}  # two result types: a text piece, the job's end
            done, _ = await asyncio.wait(racing, return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                await _send(resp, reply.piece(*getter.result()))
                continue
            getter.cancel()
            while not queue.empty():
                await _send(resp, reply.piece(*queue.get_nowait()))
            ids, spec = job.result()
            await _send(resp, reply.last(ids, spec))
            await resp.write(b"data: [DONE]\n\n")
            return resp
    except (ConnectionResetError, asyncio.CancelledError):
        cancel.set()  # the client went away: stop generating for it
        raise
    except Exception as exc:  # a failed generation: say so in the stream, as OpenAI's servers do
        cancel.set()
        await _send(resp, {"error": {"message": f"{type(exc).__name__}: {exc}"[:500], "type": "server_error"}})
        return resp


async def _send(resp: web.StreamResponse, obj: dict) -> None:
    await resp.write(b"data: " + json.dumps(obj).encode() + b"\n\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--method", choices=("none", "assistant", "prompt-lookup"), default="none")
    p.add_argument("--n-spec", type=int, default=0)
    p.add_argument("--assistant")
    p.add_argument("--max-matching-ngram", type=int, default=2)
    p.add_argument("--served-model-name")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    if args.method != "none" and args.n_spec < 1:
        p.error(f"--method {args.method} needs --n-spec of at least 1")
    if args.method == "assistant" and not args.assistant:
        p.error("--method assistant needs --assistant DIR")
    server = Server(args)
    print(f"transformers_generate: {server.describe()}", flush=True)
    web.run_app(make_app(server), host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
