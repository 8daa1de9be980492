"""`llmjax serve` as a real process on 127.0.0.1, driven by the real `openai` client and by
`lm_eval` (lm-evaluation-harness, local-completions): completions, logprobs, echo, stop, errors,
batching of concurrent requests, a full queue, SIGTERM, and lm-eval's accuracy on a probe."""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Server:
    """`llmjax serve` on a free port; `url` once it answers."""

    def __init__(self, workdir: str, *flags: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llmjax", "serve", f"--workdir={workdir}", "--port=0", *flags],
            cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        line = self.proc.stderr.readline()
        m = re.search(r"at (http://127\.0\.0\.1:(\d+))/v1", line)
        assert m, line + self.proc.stderr.read()
        self.base, self.port = m.group(1), int(m.group(2))
        self.url = self.base + "/v1"

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(self.base + path, timeout=60) as r:
            return json.loads(r.read())

    def post(self, path: str, body: bytes | dict) -> tuple[int, dict]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def stop(self) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=60)
        return rc, self.proc.stderr.read()


@pytest.fixture(scope="module")
def server(trained_tiny_run):
    s = Server(trained_tiny_run)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=120)


def test_models_and_greedy_completions_match_the_pipeline(server, client, trained_tiny_run):
    import llmjax

    [model] = client.models.list().data
    assert model.id == os.path.basename(trained_tiny_run)
    r = client.completions.create(model=model.id, prompt="The quick brown fox", max_tokens=20,
                                  temperature=0)
    [choice] = r.choices
    [want] = llmjax.pipeline("text-generation", model=trained_tiny_run)(
        "The quick brown fox", max_new_tokens=20, return_full_text=False)
    assert choice.text == want["generated_text"]
    assert r.usage.completion_tokens == 20 and choice.finish_reason == "length"
    # a list of prompts x n samples: choices in prompt-major order, seeded
    r = client.completions.create(model=model.id, prompt=["Once", "The"], max_tokens=8, n=2,
                                  temperature=1.0, seed=5)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    again = client.completions.create(model=model.id, prompt=["Once", "The"], max_tokens=8,
                                      n=2, temperature=1.0, seed=5)
    assert [c.text for c in r.choices] == [c.text for c in again.choices]


def test_logprobs_and_echo_are_the_models_scores(server, client, trained_tiny_run):
    from llmjax.eval.harness import LM
    from llmjax.eval.probe import load_params, load_run

    context, continuation = "The cat sat on", " the mat"
    r = client.completions.create(model=_name(client),
                                  prompt=context + continuation, max_tokens=0, echo=True,
                                  logprobs=1)
    lp = r.choices[0].logprobs
    assert r.choices[0].text == context + continuation
    assert "".join(lp.tokens) == context + continuation  # byte tokens
    run = load_run(trained_tiny_run)
    graphdef, params, _ = load_params(trained_tiny_run)
    lm = LM.from_model(graphdef, params, run.tokenizer, run.max_len)
    [scores] = lm.loglikelihood_tokens([(context, continuation)])
    n = len(continuation)
    np.testing.assert_allclose(lp.token_logprobs[-n:], scores.logprobs, atol=1e-4)
    greedy = [tok_lp == max(top.values()) for tok_lp, top
              in zip(lp.token_logprobs[-n:], lp.top_logprobs[-n:], strict=True)]
    assert greedy == scores.greedy.tolist()
    # generated tokens: logprobs <= 0, top alternatives sorted, the greedy token first
    r = client.completions.create(model=_name(client), prompt="Once", max_tokens=6,
                                  temperature=0, logprobs=3)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == 6 and all(v <= 0 for v in lp.token_logprobs)
    for tok, tok_lp, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert len(top) <= 3 and max(top.values()) == pytest.approx(tok_lp) and tok in top


def _name(client) -> str:
    return client.models.list().data[0].id


def test_stop_and_token_id_prompts(server, client):
    full = client.completions.create(model=_name(client), prompt="The ", max_tokens=30,
                                     temperature=0).choices[0].text
    stop = full[5:7]
    cut = client.completions.create(model=_name(client), prompt="The ", max_tokens=30,
                                    temperature=0, stop=[stop]).choices[0]
    assert cut.text == full[:full.index(stop)] and cut.finish_reason == "stop"
    ids = list(b"The ")
    by_ids = client.completions.create(model=_name(client), prompt=ids, max_tokens=30,
                                       temperature=0).choices[0].text
    assert by_ids == full


@pytest.mark.parametrize("body, param", [
    ({"prompt": "x", "top_p": 2}, "top_p"),
    ({"prompt": "x", "temperature": -0.5}, "temperature"),
    ({"prompt": "x", "n": 0}, "n"),
    ({"prompt": "x", "max_tokens": 10_000}, "max_tokens"),
    ({"prompt": "x" * 80, "max_tokens": 4}, "prompt"),
    ({"prompt": [1, 2, 999]}, "prompt"),
    ({"prompt": "x", "logprobs": 9}, "logprobs"),
    ({"prompt": "x", "stop": 3}, "stop"),
    ({"max_tokens": 3}, "prompt"),
])
def test_bad_requests_get_400_naming_the_field(server, body, param):
    status, out = server.post("/v1/completions", body)
    assert status == 400 and out["error"]["param"] == param, out
    assert param in out["error"]["message"]


def test_openai_client_sees_a_400_and_the_server_lives_on(server, client):
    import openai

    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=_name(client), prompt="x", top_p=1.5)
    assert e.value.status_code == 400 and "top_p" in str(e.value)
    status, out = server.post("/v1/completions", b"{not json")
    assert status == 400 and "JSON" in out["error"]["message"]
    assert server.get("/health")["status"] == "ok"


def test_concurrent_requests_are_batched_and_answered_alike(server, client):
    prompts = [f"{w} " for w in ("The", "Once", "A", "In", "It", "We", "He", "She")]

    def ask(p):
        return client.completions.create(model=_name(client), prompt=p, max_tokens=24,
                                         temperature=0).choices[0].text

    alone = [ask(p) for p in prompts]
    before = server.get("/health")
    with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
        together = list(pool.map(ask, prompts))
    after = server.get("/health")
    assert together == alone
    assert after["sequences"] - before["sequences"] == len(prompts)
    assert after["batches"] - before["batches"] < len(prompts)  # some shared a batch


def test_a_full_queue_answers_503_and_sigterm_stops_cleanly(trained_tiny_run):
    s = Server(trained_tiny_run, "--max_queue=1", "--max_batch=1")
    try:
        body = {"prompt": "The ", "max_tokens": 56, "temperature": 0}
        s.post("/v1/completions", body)  # compile first, so the rest is decoding
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            codes = [c for c, _ in pool.map(lambda _: s.post("/v1/completions", body),
                                             range(8))]
        assert set(codes) <= {200, 503} and 503 in codes and 200 in codes, codes
        # SIGTERM while a request is in flight: it is answered, then the process exits 0
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(s.post, "/v1/completions", body)
            time.sleep(0.3)
            rc, err = s.stop()
            assert pending.result()[0] == 200
        assert rc == 0 and "server stopped" in err
    finally:
        s.stop()


def test_a_port_in_use_is_one_line_and_exit_2(server, trained_tiny_run):
    r = subprocess.run([sys.executable, "-m", "llmjax", "serve", f"--workdir={trained_tiny_run}",
                        f"--port={server.port}"], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --port={server.port}"), r.stderr


def test_lm_eval_scores_a_probe_as_llmjax_probe_does(server, trained_tiny_run, tmp_path):
    from llmjax.eval.lm_eval_task import export_task
    from llmjax.eval.probe import run_probes

    written = export_task(trained_tiny_run, "facts", str(tmp_path / "tasks"))
    records = run_probes(trained_tiny_run, tasks=["facts"])
    probe_acc = next(r["value"] for r in records if r["metric"] == "acc")
    out = tmp_path / "lm_eval_out"
    cmd = [os.path.join(os.path.dirname(sys.executable), "lm_eval"),
           "--model", "local-completions",
           "--model_args", f"base_url={server.url}/completions,model={_server_name(server)},"
                           f"max_length=64,num_concurrent=1,max_retries=1",
           "--include_path", str(tmp_path / "tasks"), "--tasks", written["task"],
           "--batch_size", "16", "--output_path", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=str(tmp_path),
                       env={**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    [result_file] = [os.path.join(d, f) for d, _, fs in os.walk(out) for f in fs
                     if f.startswith("results")]
    results = json.load(open(result_file))["results"][written["task"]]
    assert results["acc,none"] == pytest.approx(probe_acc, abs=1e-9)
    assert written["n"] == 64


def _server_name(server) -> str:
    return server.get("/v1/models")["data"][0]["id"]
