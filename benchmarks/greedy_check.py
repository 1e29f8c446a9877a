"""Greedy generation of a big export against PyTorch (issue 27; docs/big_models.md). One mode per
process, so PyTorch and onnxruntime never hold the weights together (run each under
`flock /work/bigmem.lock` on a shared machine):

    python benchmarks/greedy_check.py torch CHECKPOINT torch.npz   # PyTorch fp32: greedy ids, each step's logits
    python benchmarks/greedy_check.py onnx EXPORT onnx.npz         # onnxruntime, the fp32 main graph (model.onnx)
    python benchmarks/greedy_check.py int4 EXPORT int4.npz         # onnxruntime, the variant selected for the CPU
    python benchmarks/greedy_check.py compare torch.npz onnx.npz int4.npz

Prepacking is off in the onnxruntime sessions (one copy of the weights), which makes MatMulNBits
slow: its step times are not decode speed."""
import sys
import time

import numpy as np

PROMPT = "The capital of France is"
NEW = 8


def prompt_ids(folder):
    from transformers import AutoTokenizer
    return np.array(AutoTokenizer.from_pretrained(folder)(PROMPT)["input_ids"], np.int64)[None]


def run_torch(ckpt, out):
    import torch
    from transformers import LlamaForCausalLM
    ids = torch.from_numpy(prompt_ids(ckpt))
    model = LlamaForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    with torch.no_grad():
        g = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW, do_sample=False,
                           output_logits=True, return_dict_in_generate=True, eos_token_id=None, pad_token_id=0)
    np.savez(out, ids=g.sequences[0, ids.shape[1]:].numpy(), logits=np.stack([l[0].float().numpy() for l in g.logits]))


def run_onnx(folder, out, variant):
    from pathlib import Path

    import onnxruntime as ort

    path = Path(folder) / "model.onnx"
    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_prepacking", "1")
    if variant:
        from optimum_onnx23.variants.runtime import select_for_providers
        selected, _ = select_for_providers(path, ["CPUExecutionProvider"])
        print("variant selected for the CPU")
        session = selected.session(["CPUExecutionProvider"], options)
    else:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    inputs = {i.name: i for i in session.get_inputs()}
    outs = [o.name for o in session.get_outputs()]
    ids = prompt_ids(folder)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(ids.shape[1])[None]}
    for name, info in inputs.items():
        if name.startswith("past_"):
            feeds[name] = np.zeros([1, info.shape[1], 0, info.shape[3]], np.float32)
    got, logits, length = [], [], ids.shape[1]
    for step in range(NEW):
        t = time.time()
        result = dict(zip(outs, session.run(outs, {k: v for k, v in feeds.items() if k in inputs})))
        last = result["logits"][0, -1]
        logits.append(last)
        nxt = int(last.argmax())
        got.append(nxt)
        feeds = {"input_ids": np.array([[nxt]]), "attention_mask": np.ones((1, length + 1), np.int64), "position_ids": np.array([[length]])}
        for name in inputs:
            if name.startswith("past_key_values."):
                feeds[name] = result[name.replace("past_key_values.", "present.")]
        length += 1
        print(f"step {step}: {nxt} ({time.time() - t:.1f} s)", flush=True)
    np.savez(out, ids=np.array(got), logits=np.stack(logits))


def compare(paths):
    runs = {p: np.load(p) for p in paths}
    base = paths[0]
    for p in paths[1:]:
        a, b = runs[base], runs[p]
        same = int((a["ids"] == b["ids"]).sum())
        first_div = next((i for i in range(len(a["ids"])) if a["ids"][i] != b["ids"][i]), None)
        la, lb = a["logits"][0], b["logits"][0]
        cos = float(la @ lb / np.linalg.norm(la) / np.linalg.norm(lb))
        top5 = len(set(np.argsort(-la)[:5]) & set(np.argsort(-lb)[:5]))
        print(f"{p} vs {base}: ids {b['ids'].tolist()} vs {a['ids'].tolist()}: {same}/{len(a['ids'])} equal (first divergence {first_div}); "
              f"step-0 logits max|diff| {np.abs(la - lb).max():.3e} (max|ref| {np.abs(la).max():.3f}), cosine {cos:.5f}, top-5 overlap {top5}/5")


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "torch":
        run_torch(sys.argv[2], sys.argv[3])
    elif mode in ("onnx", "int4"):
        run_onnx(sys.argv[2], sys.argv[3], mode == "int4")
    else:
        compare(sys.argv[2:])
