"""Pushing to the Hub and loading back from the Hub cache, against an in-memory Hub.

The only thing replaced is the network edge: huggingface_hub's own `set_client_factory` hook
gets an httpx2 client like its default one (same offline/request-id event hook, redirects,
timeouts) whose transport is `FakeHub.handle`, an in-memory implementation of the Hub endpoints
that huggingface_hub calls (validate-yaml, repos/create, preupload, LFS batch + PUT, commit,
revision, tree, resolve). Everything above it, create_repo, create_commit, snapshot_download
and the cache layout they write, is huggingface_hub's real code.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import shutil
import socket
import tempfile
from pathlib import Path
from urllib.parse import unquote

import httpx2
import numpy as np
import pytest
import torch
from huggingface_hub import constants, snapshot_download
from huggingface_hub.utils import _http

from optimum_onnx23.publish import (
    HubRequestError,
    InvalidRepoIdError,
    MissingTokenError,
    ModelCardError,
    NoOnnxFilesError,
    plan_hub_layout,
    push_to_hub,
)

ENDPOINT = constants.ENDPOINT
REPO_ID = "onnx-community-test/tiny-llama-onnx23"


def _git_blob_sha1(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class FakeHub:
    """The Hub's HTTP API for one process, in memory. `requests` records (method, path, body) of each call."""

    def __init__(self):
        # repo_id -> {"private", "commits": [(oid, message)], "refs": {branch: oid},
        #             "trees": {oid: {path: (bytes, lfs sha256 or None)}}, "files": main's tree}
        self.repos: dict[str, dict] = {}
        self.lfs: dict[str, bytes] = {}  # sha256 -> content
        self.requests: list[tuple[str, str, bytes]] = []
        self.authorization: list[str | None] = []
        self.reject_card = False
        self.reject_token = False
        self.user = "fake-user"

    # -- helpers ------------------------------------------------------------------------
    @staticmethod
    def _json(data, status: int = 200) -> httpx2.Response:
        return httpx2.Response(status, json=data)

    def paths(self, method: str | None = None) -> list[str]:
        return [path for m, path, _ in self.requests if method is None or m == method]

    def head(self, repo_id: str, branch: str = "main") -> str:
        return self.repos[repo_id]["refs"][branch]

    def _repo(self, match: re.Match) -> tuple[str, dict] | tuple[None, None]:
        repo_id = f"{match.group('org')}/{match.group('name')}"
        return repo_id, self.repos.get(repo_id)

    def _resolve_revision(self, repo_id: str, revision: str) -> str | None:
        repo = self.repos[repo_id]
        if revision in repo["refs"]:
            return repo["refs"][revision]
        return revision if revision in repo["trees"] else None

    # -- the endpoints --------------------------------------------------------------------
    def handle(self, request: httpx2.Request) -> httpx2.Response:
        body = request.read()
        path = unquote(request.url.path)
        if path == "/api/agent-harnesses":
            # huggingface_hub's own user-agent registry lookup, not part of the upload; 404 = "none".
            return self._json({"error": "not served by FakeHub"}, 404)
        self.requests.append((request.method, path, body))
        self.authorization.append(request.headers.get("authorization"))
        if self.reject_token and request.headers.get("authorization"):
            return self._json({"error": "Invalid credentials in Authorization header"}, 401)
        repo = r"(?P<org>[\w.-]+)/(?P<name>[\w.-]+)"
        routes = [
            ("POST", r"/api/validate-yaml", self._validate_yaml),
            ("POST", r"/api/repos/create", self._create_repo),
            ("POST", rf"/api/models/{repo}/preupload/(?P<rev>[^/]+)", self._preupload),
            ("POST", rf"/{repo}\.git/info/lfs/objects/batch", self._lfs_batch),
            ("PUT", r"/__lfs__/(?P<oid>[0-9a-f]{64})", self._lfs_put),
            ("POST", rf"/api/models/{repo}/commit/(?P<rev>[^/]+)", self._commit),
            ("POST", rf"/api/models/{repo}/branch/(?P<branch>[^/]+)", self._create_branch),
            ("GET", rf"/api/models/{repo}/revision/(?P<rev>[^/]+)", self._revision),
            ("GET", rf"/api/models/{repo}/tree/(?P<rev>[^/]+)(?P<sub>/.*)?", self._tree),
            ("HEAD", rf"/{repo}/resolve/(?P<rev>[^/]+)/(?P<file>.+)", self._resolve),
            ("GET", rf"/{repo}/resolve/(?P<rev>[^/]+)/(?P<file>.+)", self._resolve),
        ]
        for method, pattern, handler in routes:
            match = re.fullmatch(pattern, path)
            if method == request.method and match:
                return handler(request, match, body)
        return self._json({"error": f"FakeHub has no route for {request.method} {path}"}, 404)

    def _validate_yaml(self, request, match, body):
        content = json.loads(body)["content"]
        assert content.startswith("---\n")
        if self.reject_card:
            return self._json({"errors": [{"message": '"pipeline_tag" must be a known task'}], "warnings": []}, 400)
        return self._json({"errors": [], "warnings": []})

    def _create_repo(self, request, match, body):
        payload = json.loads(body)
        repo_id = f"{payload.get('organization') or self.user}/{payload['name']}"
        url = f"{ENDPOINT}/{repo_id}"
        if repo_id in self.repos:
            return self._json({"error": "You already created this model repo", "url": url}, 409)
        initial = {".gitattributes": (b"*.onnx filter=lfs diff=lfs merge=lfs -text\n", None)}
        oid = hashlib.sha1(repo_id.encode()).hexdigest()
        self.repos[repo_id] = {
            "private": payload.get("visibility") == "private",
            "commits": [(oid, "initial commit")],
            "refs": {"main": oid},
            "trees": {oid: initial},
            "files": initial,
        }
        return self._json({"url": url, "name": repo_id})

    def _preupload(self, request, match, body):
        files = []
        for f in json.loads(body)["files"]:
            sample = base64.b64decode(f["sample"])
            # The Hub stores binary files and the patterns of its default .gitattributes in LFS.
            lfs = b"\0" in sample or f["path"].endswith((".onnx", ".onnx_data"))
            files.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False})
        repo_id, repo = self._repo(match)
        if repo is None or match.group("rev") not in repo["refs"]:
            return self._json({"error": "Invalid rev id"}, 404)
        return self._json({"files": files, "commitOid": self.head(repo_id, match.group("rev"))})

    def _lfs_batch(self, request, match, body):
        objects = []
        for obj in json.loads(body)["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.lfs:
                entry["actions"] = {"upload": {"href": f"{ENDPOINT}/__lfs__/{obj['oid']}"}}
            objects.append(entry)
        return self._json({"transfer": "basic", "objects": objects})

    def _lfs_put(self, request, match, body):
        if hashlib.sha256(body).hexdigest() != match.group("oid"):
            return self._json({"error": "sha256 mismatch"}, 400)
        self.lfs[match.group("oid")] = body
        return httpx2.Response(200)

    def _commit(self, request, match, body):
        repo_id, repo = self._repo(match)
        if repo is None:
            return self._json({"error": "Repository not found"}, 404)
        branch = match.group("rev")
        if branch not in repo["refs"]:
            return self._json({"error": "Invalid rev id"}, 404)
        lines = [json.loads(line) for line in body.decode().splitlines() if line]
        header = lines[0]
        assert header["key"] == "header", header
        files = dict(repo["trees"][repo["refs"][branch]])
        for line in lines[1:]:
            value = line["value"]
            if line["key"] == "file":
                assert value["encoding"] == "base64"
                files[value["path"]] = (base64.b64decode(value["content"]), None)
            elif line["key"] == "lfsFile":
                if value["oid"] not in self.lfs:
                    return self._json({"error": f"LFS object {value['oid']} was never uploaded"}, 422)
                files[value["path"]] = (self.lfs[value["oid"]], value["oid"])
            else:
                return self._json({"error": f"unexpected commit line {line['key']}"}, 400)
        oid = hashlib.sha1(json.dumps(sorted(files)).encode() + str(len(repo["commits"])).encode()).hexdigest()
        repo["commits"].append((oid, header["value"]["summary"]))
        repo["trees"][oid] = files
        repo["refs"][branch] = oid
        if branch == "main":
            repo["files"] = files
        return self._json({"success": True, "commitOid": oid, "commitUrl": f"{ENDPOINT}/{repo_id}/commit/{oid}"})

    def _create_branch(self, request, match, body):
        repo_id, repo = self._repo(match)
        if repo is None:
            return self._json({"error": "Repository not found"}, 404)
        if match.group("branch") in repo["refs"]:
            return self._json({"error": "Reference already exists"}, 409)
        start = json.loads(body or b"{}").get("startingPoint", "main")
        repo["refs"][match.group("branch")] = self._resolve_revision(repo_id, start)
        return self._json({})

    def _revision(self, request, match, body):
        repo_id, repo = self._repo(match)
        if repo is None:
            return self._json({"error": "Repository not found"}, 404)
        commit = self._resolve_revision(repo_id, match.group("rev"))
        if commit is None:
            return self._json({"error": "Invalid rev id"}, 404)
        return self._json(
            {
                "id": repo_id,
                "modelId": repo_id,
                "sha": commit,
                "private": repo["private"],
                "siblings": [{"rfilename": p} for p in sorted(repo["trees"][commit])],
                "tags": [],
            }
        )

    def _tree(self, request, match, body):
        repo_id, repo = self._repo(match)
        commit = self._resolve_revision(repo_id, match.group("rev")) if repo else None
        if commit is None:
            return self._json({"error": "Invalid rev id"}, 404)
        entries = []
        for path, (content, lfs) in sorted(repo["trees"][commit].items()):
            entry = {"type": "file", "path": path, "size": len(content), "oid": _git_blob_sha1(content)}
            if lfs:
                entry["lfs"] = {"oid": lfs, "size": len(content), "pointerSize": 134}
            entries.append(entry)
        return self._json(entries)

    def _resolve(self, request, match, body):
        repo_id, repo = self._repo(match)
        commit = self._resolve_revision(repo_id, match.group("rev")) if repo else None
        found = repo["trees"][commit].get(match.group("file")) if commit else None
        if found is None:
            return httpx2.Response(404, headers={"X-Error-Code": "EntryNotFound"})
        content, lfs = found
        headers = {
            "X-Repo-Commit": commit,
            "ETag": f'"{lfs or _git_blob_sha1(content)}"',
            "Content-Length": str(len(content)),
        }
        if lfs:
            headers.update({"X-Linked-Etag": f'"{lfs}"', "X-Linked-Size": str(len(content))})
        return httpx2.Response(200, headers=headers, content=b"" if request.method == "HEAD" else content)


def _install_transport(handler) -> None:
    _http.close_session()
    _http.set_client_factory(
        lambda: httpx2.Client(
            transport=httpx2.MockTransport(handler),
            event_hooks={"request": [_http.hf_request_event_hook]},
            follow_redirects=True,
            timeout=None,
        )
    )


@pytest.fixture
def no_network(monkeypatch):
    """Fail the test on any request that reaches huggingface_hub's transport, and on any socket connect."""
    attempts = []

    def refuse(request):
        attempts.append(str(request.url))
        raise AssertionError(f"unexpected network call: {request.method} {request.url}")

    def refuse_connect(self, address, *args):
        attempts.append(str(address))
        raise AssertionError(f"unexpected socket connect to {address}")

    _install_transport(refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse_connect)
    yield attempts
    _http.close_session()
    _http.set_client_factory(_http.default_client_factory)


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """An online FakeHub, a fake token in HF_TOKEN, Xet off (its Rust client bypasses httpx), no login cache."""
    hub = FakeHub()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-login" / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-login" / "stored_tokens"))
    for other_source in ("HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HF_OIDC_ID_TOKEN"):
        monkeypatch.delenv(other_source, raising=False)
    monkeypatch.setenv("HF_TOKEN", "hf_FakeTokenForTests0123456789abcdef")
    _install_transport(hub.handle)
    yield hub
    _http.close_session()
    _http.set_client_factory(_http.default_client_factory)


@pytest.fixture(scope="module")
def export_folder(exported_dir) -> Path:
    return exported_dir("llama")


def test_push_creates_the_repo_and_commits_the_hub_layout(fake_hub, export_folder):
    info = push_to_hub(export_folder, REPO_ID, private=True, commit_message="Add ONNX export")

    layout = plan_hub_layout(export_folder, REPO_ID)
    assert [(m, p) for m, p, _ in fake_hub.requests][:2] == [
        ("POST", "/api/validate-yaml"),
        ("POST", "/api/repos/create"),
    ]
    create = json.loads(fake_hub.requests[1][2])
    assert create == {"name": "tiny-llama-onnx23", "organization": "onnx-community-test", "visibility": "private", "type": "model"}
    # One commit, after the preupload and the LFS uploads, with every planned file.
    assert fake_hub.paths("POST")[-1] == f"/api/models/{REPO_ID}/commit/main"
    assert fake_hub.paths("POST").count(f"/api/models/{REPO_ID}/commit/main") == 1
    assert f"/api/models/{REPO_ID}/preupload/main" in fake_hub.paths("POST")
    repo = fake_hub.repos[REPO_ID]
    assert repo["private"] is True
    assert repo["commits"][-1] == (info.oid, "Add ONNX export")
    assert info.commit_url == f"{ENDPOINT}/{REPO_ID}/commit/{info.oid}"
    assert set(repo["files"]) == set(layout.paths) | {".gitattributes"}
    # Big binary files went through LFS with the bytes on disk; small text ones as regular blobs.
    for path in ("onnx/model.onnx", "onnx/model.onnx_data"):
        content, lfs = repo["files"][path]
        assert lfs == hashlib.sha256(content).hexdigest()
        assert content == (export_folder / Path(path).name).read_bytes()
        assert f"/__lfs__/{lfs}" in fake_hub.paths("PUT")
    assert repo["files"]["tokenizer.json"] == ((export_folder / "tokenizer.json").read_bytes(), None)
    assert repo["files"]["README.md"][0] == layout["README.md"].content
    # The token went to the Hub, as a bearer header, on the authenticated calls.
    assert "Bearer hf_FakeTokenForTests0123456789abcdef" in fake_hub.authorization


def test_push_to_an_existing_repo_adds_a_commit(fake_hub, export_folder):
    first = push_to_hub(export_folder, REPO_ID)
    second = push_to_hub(export_folder, REPO_ID, commit_message="again")
    assert first.oid != second.oid
    assert [m for _, m in fake_hub.repos[REPO_ID]["commits"][1:]] == [first.commit_message, "again"]
    # Same content: the second push finds the LFS objects on the Hub and uploads no bytes again.
    assert len(fake_hub.paths("PUT")) == 2


def test_push_to_a_branch_creates_it_and_leaves_main_alone(fake_hub, export_folder, tmp_path):
    info = push_to_hub(export_folder, REPO_ID, revision="onnx-fp32")
    repo = fake_hub.repos[REPO_ID]
    assert f"/api/models/{REPO_ID}/branch/onnx-fp32" in fake_hub.paths("POST")
    assert repo["refs"]["onnx-fp32"] == info.oid
    assert set(repo["files"]) == {".gitattributes"}  # main untouched
    snapshot = Path(snapshot_download(REPO_ID, revision="onnx-fp32", cache_dir=tmp_path / "cache"))
    assert (snapshot / "onnx" / "model.onnx_data").read_bytes() == (export_folder / "model.onnx_data").read_bytes()
    assert push_to_hub(export_folder, REPO_ID, revision="onnx-fp32", commit_message="again").oid == repo["refs"]["onnx-fp32"]


def test_token_is_never_printed_logged_or_written(fake_hub, export_folder, tmp_path, capfd, caplog, monkeypatch):
    token = "hf_FakeTokenForTests0123456789abcdef"
    monkeypatch.setattr(constants, "HF_DEBUG", True)  # huggingface_hub's most verbose logging
    cache = tmp_path / "cache"
    with caplog.at_level(logging.DEBUG):
        push_to_hub(export_folder, REPO_ID)
        push_to_hub(export_folder, REPO_ID, dry_run=True)
        snapshot_download(REPO_ID, cache_dir=cache)
        with pytest.raises(ModelCardError) as refused:
            fake_hub.reject_card = True
            push_to_hub(export_folder, REPO_ID)
    out, err = capfd.readouterr()
    assert f"Bearer {token}" in fake_hub.authorization  # it was used...
    assert token not in out + err + str(refused.value)  # ...and shown nowhere
    assert caplog.records and not [r for r in caplog.records if token in r.getMessage()]
    written = [p for root in (tmp_path, export_folder) for p in root.rglob("*") if p.is_file()]
    assert any(p.name == "model.onnx_data" for p in written)
    assert not [p for p in written if token.encode() in p.read_bytes()]
    assert not [c for _, _, c in fake_hub.requests if token.encode() in c]  # not in any request body either


def test_pushed_repo_loads_from_the_hub_cache_offline_and_generates(fake_hub, export_folder, tiny_model_dir, tmp_path, monkeypatch):
    info = push_to_hub(export_folder, REPO_ID)
    cache = tmp_path / "hub-cache"
    # huggingface_hub's own download code lays the cache out: blobs/, snapshots/<commit>/, refs/main.
    snapshot = Path(snapshot_download(REPO_ID, cache_dir=cache))
    repo_cache = cache / "models--onnx-community-test--tiny-llama-onnx23"
    assert snapshot == repo_cache / "snapshots" / info.oid
    assert (repo_cache / "refs" / "main").read_text() == info.oid
    assert (snapshot / "onnx" / "model.onnx_data").is_symlink()
    blob = (snapshot / "onnx" / "model.onnx_data").resolve()
    assert blob.parent == (repo_cache / "blobs").resolve()
    assert blob.name == hashlib.sha256(blob.read_bytes()).hexdigest()

    # Now offline: HF_HUB_OFFLINE=1, and any request would fail the test.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    requests_before = len(fake_hub.requests)
    _install_transport(lambda request: pytest.fail(f"network call while offline: {request.url}"))

    from transformers import AutoModelForCausalLM

    from optimum_onnx23.pipelines import ORTModelForCausalLM

    model = ORTModelForCausalLM.from_pretrained(REPO_ID, cache_dir=cache)
    prompt = torch.tensor([[1, 17, 205, 33, 96, 250, 7]])
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama")).eval()
    with torch.no_grad():
        expected = reference.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12, do_sample=False, min_new_tokens=12)
    got = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12, do_sample=False, min_new_tokens=12)
    np.testing.assert_array_equal(np.asarray(got), expected.numpy())
    assert len(fake_hub.requests) == requests_before


def test_pipeline_from_the_hub_cache_offline(fake_hub, export_folder, tiny_model_dir, tmp_path, monkeypatch):
    push_to_hub(export_folder, REPO_ID)
    cache = tmp_path / "hub-cache"
    snapshot_download(REPO_ID, cache_dir=cache)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    _install_transport(lambda request: pytest.fail(f"network call while offline: {request.url}"))

    import transformers

    import optimum_onnx23

    generator = optimum_onnx23.pipeline("text-generation", model=REPO_ID, accelerator="ort", cache_dir=cache)
    text = "Hello world, this is"
    got = generator(text, max_new_tokens=10, do_sample=False)
    reference = transformers.pipeline("text-generation", model=str(tiny_model_dir("llama")))
    expected = reference(text, max_new_tokens=10, do_sample=False)
    assert got[0]["generated_text"] == expected[0]["generated_text"]
    assert len(got[0]["generated_text"]) > len(text)


def test_from_pretrained_downloads_only_what_generation_needs(fake_hub, export_folder, tmp_path):
    first = push_to_hub(export_folder, REPO_ID)
    push_to_hub(export_folder, REPO_ID, commit_message="second")
    from optimum_onnx23.pipelines import ORTModelForCausalLM

    model = ORTModelForCausalLM.from_pretrained(REPO_ID, cache_dir=tmp_path / "cache", revision=first.oid)
    downloaded = {p.split(f"/resolve/{first.oid}/", 1)[1] for p in fake_hub.paths("GET") if "/resolve/" in p}
    assert {"onnx/model.onnx", "onnx/model.onnx_data", "config.json", "tokenizer.json"} <= downloaded
    assert not downloaded & {"README.md", "genai_config.json", ".gitattributes"}
    assert (tmp_path / "cache" / "models--onnx-community-test--tiny-llama-onnx23" / "snapshots" / first.oid).is_dir()
    prompt = torch.tensor([[1, 17, 205]])
    assert np.asarray(model.generate(prompt, max_new_tokens=4, do_sample=False)).shape == (1, 7)


def test_push_uploads_materialized_variants_and_from_pretrained_selects_the_in_file_one(
    fake_hub, exported_dir, tmp_path, monkeypatch
):
    from optimum_onnx23.pipelines import ORTModelForCausalLM
    from optimum_onnx23.publish import save_pretrained

    folder = exported_dir("llama", "--variant", "ort-cpu-int4")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    info = push_to_hub(folder, REPO_ID)
    assert list(scratch.iterdir()) == []  # the materialized files were written for the upload, then removed
    written = tmp_path / "written"
    save_pretrained(folder, written, REPO_ID)
    files = fake_hub.repos[REPO_ID]["files"]
    for path in ("onnx/model_q4.onnx", "onnx/model_q4.onnx_data", "onnx/manifest.json", "genai_config.json"):
        assert files[path][0] == (written / path).read_bytes(), path
    assert files["onnx/model_q4.onnx_data"][1] is not None  # through LFS, as any weights file
    model = ORTModelForCausalLM.from_pretrained(REPO_ID, cache_dir=tmp_path / "cache", revision=info.oid)
    downloaded = {p.split(f"/resolve/{info.oid}/", 1)[1] for p in fake_hub.paths("GET") if "/resolve/" in p}
    assert "onnx/model.onnx" in downloaded and not {p for p in downloaded if "model_q4" in p}
    assert model.variant == "ort-cpu-int4"


@pytest.mark.parametrize(
    "repo_id, message",
    [("not a repo", "Invalid Hub repo id 'not a repo'"), ("org/name/extra", "Invalid Hub repo id"), ("org--x/name", "Invalid Hub repo id")],
)
def test_malformed_repo_id_uploads_nothing(fake_hub, export_folder, repo_id, message):
    with pytest.raises(InvalidRepoIdError) as error:
        push_to_hub(export_folder, repo_id)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert fake_hub.requests == []


def test_missing_token_uploads_nothing(fake_hub, export_folder, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(MissingTokenError, match=r"set HF_TOKEN or run `hf auth login`") as error:
        push_to_hub(export_folder, REPO_ID)
    assert "\n" not in str(error.value)
    assert fake_hub.requests == []


def test_folder_without_onnx_uploads_nothing(fake_hub, export_folder, tmp_path):
    folder = tmp_path / "no-onnx"
    folder.mkdir()
    for name in ("config.json", "generation_config.json", "tokenizer.json"):
        (folder / name).write_bytes((export_folder / name).read_bytes())
    with pytest.raises(NoOnnxFilesError, match="holds no ONNX model") as error:
        push_to_hub(folder, REPO_ID)
    assert "\n" not in str(error.value)
    assert fake_hub.requests == []


def _folder_with_card(export_folder: Path, tmp_path: Path, card: str) -> Path:
    folder = tmp_path / "with-card"
    folder.mkdir()
    for p in export_folder.iterdir():
        shutil.copy2(p, folder / p.name)
    (folder / "README.md").write_text(card)
    return folder


@pytest.mark.parametrize(
    "metadata, message",
    [
        ("library_name: transformers.js\npipeline_tag: text-generation\ntags: [onnx]\nbase_model: not a model id", "`base_model: not a model id` is not a Hub model id"),
        ("library_name: transformers.js\npipeline_tag: image-classification\ntags: [onnx]", "set `pipeline_tag: text-generation`"),
        ("pipeline_tag: text-generation\ntags: [onnx]", "no `library_name`"),
        ("library_name: transformers.js\npipeline_tag: text-generation\ntags: [llama]", "lacks `onnx`"),
        ("library_name: [unclosed", "not valid YAML"),
    ],
)
def test_invalid_card_metadata_uploads_nothing(fake_hub, export_folder, tmp_path, metadata, message):
    folder = _folder_with_card(export_folder, tmp_path, f"---\n{metadata}\n---\n\n# A model\n")
    with pytest.raises(ModelCardError) as error:
        push_to_hub(folder, REPO_ID)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert fake_hub.requests == []


def test_card_rejected_by_the_hub_creates_nothing(fake_hub, export_folder):
    fake_hub.reject_card = True
    with pytest.raises(ModelCardError, match="The Hub rejected the model card metadata"):
        push_to_hub(export_folder, REPO_ID)
    assert fake_hub.paths() == ["/api/validate-yaml"]
    assert fake_hub.repos == {}


def test_refused_token_is_one_line_without_the_token(fake_hub, export_folder):
    fake_hub.reject_token = True
    with pytest.raises(HubRequestError) as error:
        push_to_hub(export_folder, REPO_ID)
    message = str(error.value)
    assert "Could not create the model repo onnx-community-test/tiny-llama-onnx23 on the Hub" in message
    assert "check that your token is valid" in message and "\n" not in message and "hf_FakeToken" not in message
    assert not [p for p in fake_hub.paths() if "/commit/" in p or "/preupload/" in p]


def test_push_while_offline_is_one_line_and_sends_nothing(fake_hub, export_folder, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubRequestError, match=r"HF_HUB_OFFLINE is set; unset it to push, or pass --dry-run\.$"):
        push_to_hub(export_folder, REPO_ID)
    assert fake_hub.requests == []


def test_dry_run_makes_no_network_call(no_network, export_folder, capsys, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_FakeTokenForTests0123456789abcdef")
    monkeypatch.setenv("HF_OIDC_RESOURCE", "model:onnx-community-test/tiny-llama-onnx23")  # would exchange a token online
    assert push_to_hub(export_folder, REPO_ID, private=True, dry_run=True) is None
    out = capsys.readouterr().out
    assert no_network == []
    layout = plan_hub_layout(export_folder, REPO_ID)
    assert "Dry run: nothing was uploaded" in out and "private model repo " + REPO_ID in out
    for f in layout.files:
        assert re.search(rf"^  {re.escape(f.path_in_repo)} +[\d,.]+ (kB|MB)$", out, re.M), f.path_in_repo
    assert str(layout.card).strip() in out
    assert "A Hugging Face token was found." in out and "hf_FakeToken" not in out
