"""A Hub release folder: every chosen level, the importance matrix, a model card and SHA256SUMS,
built in a temporary sibling folder and renamed into place only when complete."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gguf import Keys

from tlite_edge.errors import TliteError
from tlite_edge.fsutil import _umask, atomic_output, make_dirs, sha256_file, sidecar_notes, sidecar_path
from tlite_edge.gguf.reader import read_header
from tlite_edge.quant.levels import Advance, quantize_levels
from tlite_edge.quant.profiles import Profile, load_profiles, select
from tlite_edge.ship.card import UPSTREAM, FileRow, model_for, read_eval, render_card
from tlite_edge.ship.checks import find_problems

IMATRIX_NOTE = "importance matrix (llama-imatrix GGUF format; `llama-quantize --imatrix` reads it)"


@dataclass
class ReleaseOptions:
    levels: str | None = None
    imatrix: Path | None = None
    calibrate: bool = False
    chunks: int | None = None
    ctx: int = 512
    threads: int | None = None
    eval_json: Path | None = None
    base_model: str = UPSTREAM
    quantized_by: str = "tlite-edge"
    repo: str | None = None
    keep_bf16: bool = False
    name: str | None = None
    revision: str | None = None
    warnings: list[str] = field(default_factory=list)


def choose_levels(opts: ReleaseOptions) -> list[Profile]:
    """``-q`` as given; by default every built-in level (those that need an imatrix only with one)."""
    profiles = load_profiles()
    with_imatrix = opts.imatrix is not None or opts.calibrate
    if opts.levels:
        chosen = select(profiles, opts.levels)
    else:
        chosen = [p for p in profiles.values() if with_imatrix or not p.requires_imatrix]
    needs = [p.name for p in chosen if p.requires_imatrix]
    if needs and not with_imatrix:
        raise TliteError(
            ",".join(needs), "these levels need an importance matrix: pass --imatrix FILE or --calibrate"
        )
    return chosen


def prepare_out(out: Path) -> Path:
    """The empty working folder next to ``out`` (its parents created); ``out`` must not exist or be an
    empty folder."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TliteError(out, "already exists and is not an empty folder; choose a new --out")
    parent = out.absolute().parent
    make_dirs(parent)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=parent))


def bf16_source(source: str, work: Path, opts: ReleaseOptions, log: Callable[[str], None]) -> Path:
    """A BF16/F16/F32 GGUF of the source: the file itself when SOURCE is a GGUF, else converted."""
    path = Path(source)
    if path.is_file():
        read_header(path)
        return path
    from tlite_edge.gguf_build.build import convert
    from tlite_edge.known_models import find_model
    from tlite_edge.source import resolve_source

    folder, name = resolve_source(source, opts.revision)
    known = find_model(source)
    result = convert(folder, name=opts.name or name, outtype="bf16", out_dir=work, known=known)
    for fix in result.fixes:
        log(f"fixed: {fix}")
    sidecar_path(result.path).unlink(missing_ok=True)
    return result.path


def make_imatrix(bf16: Path, work: Path, base: str, opts: ReleaseOptions, log: Callable[[str], None]) -> Path:
    """The release's imatrix file: the one given (copied) or one calibrated on the default text."""
    from tlite_edge.quant.imatrix import load_imatrix
    from tlite_edge.quant.levels import calibrate

    target = work / f"{base}.imatrix.gguf"
    if opts.imatrix is not None:
        load_imatrix(opts.imatrix, bf16)  # validates against the model
        shutil.copyfile(opts.imatrix, target)
        return target
    log("calibrating on the default Russian text")
    return calibrate(bf16, target, ctx=opts.ctx, chunks=opts.chunks, threads=opts.threads)[0]


def write_sums(folder: Path) -> Path:
    """SHA256SUMS (``sha256sum -c`` format) over every other file in the folder."""
    lines = [f"{sha256_file(p)}  {p.name}\n" for p in sorted(folder.iterdir()) if p.name != "SHA256SUMS"]
    target = folder / "SHA256SUMS"
    with atomic_output(target) as fh:
        fh.write("".join(lines).encode())
    return target


def build_release(
    source: str,
    out: Path,
    opts: ReleaseOptions,
    *,
    log: Callable[[str], None] = print,
    advance: Advance | None = None,
) -> list[FileRow]:
    """Build the release folder ``out``; return the card's file rows."""
    profiles = choose_levels(opts)
    quality = {}
    if opts.eval_json is not None:
        quality, opts.warnings = read_eval(opts.eval_json)
    work = prepare_out(out)
    try:
        rows = _build(source, work, profiles, opts, quality, log, advance)
        work.chmod(0o777 & ~_umask())
        with contextlib.suppress(FileNotFoundError):
            out.rmdir()
        work.rename(out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return rows


def _build(
    source: str,
    work: Path,
    profiles: list[Profile],
    opts: ReleaseOptions,
    quality: dict,
    log: Callable[[str], None],
    advance: Advance | None,
) -> list[FileRow]:
    bf16 = bf16_source(source, work, opts, log)
    header = read_header(bf16)
    if problems := find_problems(header, sidecar_notes(bf16)):
        codes = ", ".join(f.code for f in problems)
        raise TliteError(
            bf16,
            f"known problems ({codes}): see `tlite-edge inspect`; repair with `inspect --fix` first",
        )
    kv = header.kv
    base = str(kv.get(Keys.General.NAME) or bf16.stem.rsplit("-", 1)[0])
    default_base = opts.base_model == UPSTREAM  # the default names T-lite-instruct-0.1
    model = model_for(base, kv.get(Keys.General.ARCHITECTURE), "" if default_base else opts.base_model)
    if default_base and model.hub_id != UPSTREAM:
        if model.hub_ids:
            opts.base_model = model.hub_id  # a known model other than the default
        else:
            opts.warnings.append(f"{base} is no known model: pass --base-model for the card's base_model")
    extra: dict[str, str] = {}
    imatrix = None
    if opts.imatrix is not None or opts.calibrate:
        imatrix = make_imatrix(bf16, work, base, opts, log)
        extra[imatrix.name] = (
            "importance matrix (llama-imatrix GGUF format; `llama-quantize --imatrix` reads it)"
        )
    results = quantize_levels(
        bf16,
        profiles,
        work,
        imatrix=imatrix,
        threads=opts.threads,
        base=base,
        advance=advance,
        done=lambda r: log(f"quantized {r.profile}"),
    )
    rows: list[FileRow] = []
    for profile, result in zip(profiles, results, strict=True):
        assert result.path is not None
        sidecar_path(result.path).unlink(missing_ok=True)
        size = result.path.stat().st_size
        rows.append(
            FileRow(result.path.name, size, profile.name, result.bpw, profile.target, profile.description)
        )
    if opts.keep_bf16:
        kept = work / bf16.name
        if bf16.parent.resolve() != work.resolve():
            shutil.copyfile(bf16, kept)
        rows.append(FileRow(kept.name, kept.stat().st_size, "BF16", 16.0, "reference", "lossless conversion"))
    elif bf16.parent.resolve() == work.resolve():
        bf16.unlink()
    extra["SHA256SUMS"] = "sha256 of every file (`sha256sum -c SHA256SUMS`)"
    extra["README.md"] = "this card"
    card = render_card(
        title=base,
        base_model=opts.base_model,
        license_id=kv.get(Keys.General.LICENSE),
        quantized_by=opts.quantized_by,
        files=rows,
        extra_files=extra,
        quality=quality,
        repo=opts.repo,
        model=model,
    )
    with atomic_output(work / "README.md") as fh:
        fh.write(card.encode("utf-8"))
    write_sums(work)
    return rows


def check_repo(repo: str) -> str:
    from tlite_edge.source import REPO_ID

    if not REPO_ID.fullmatch(repo) or ".." in repo:
        raise TliteError(repo, "not a Hub repo id (owner/name)")
    return repo


def push(folder: Path, repo: str, log: Callable[[str], None] = print) -> str:
    """Upload the release folder to the Hub model repo ``repo`` (created if missing); return its URL."""
    from huggingface_hub import HfApi

    check_repo(repo)
    api = HfApi()
    try:
        api.create_repo(repo, repo_type="model", exist_ok=True)
        info = api.upload_folder(
            folder_path=str(folder),
            repo_id=repo,
            repo_type="model",
            commit_message="GGUF release (tlite-edge)",
        )
    except Exception as exc:  # network, auth, quota: one line
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise TliteError(repo, f"upload failed ({first})") from None
    log(f"pushed {folder} to https://huggingface.co/{repo}")
    return str(getattr(info, "commit_url", "") or f"https://huggingface.co/{repo}")
