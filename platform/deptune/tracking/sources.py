"""Source adapters that live in the Model Registry: a spec's `method.init_from: models:/NAME/VERSION` (or
`models:/NAME@alias`) is downloaded by the driver before anything reaches a method, so workers, checks and
methods only ever see an ordinary adapter folder."""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import TypeVar

from deptune.methods.config import is_registry_uri
from deptune.methods.record import CONFIG_FILE
from deptune.spec_base import SpecError, redact
from deptune.tracking.store import check_store, resolve_uri
from deptune.train.spec import RunSpec

S = TypeVar("S", bound=RunSpec)


def fetch_adapter(model_uri: str, tracking_uri: str | None, dest: Path) -> Path:
    """The adapter folder of a registered version (`models:/NAME/VERSION`, `models:/NAME@alias`),
    downloaded to a temporary folder and moved to `dest` only once it is whole: how a spec names a source
    adapter that lives in the registry. Nothing is left at `dest` when it cannot be fetched."""
    import mlflow
    from mlflow.artifacts import download_artifacts

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="deptune-source-") as tmp:
        local = Path(download_artifacts(artifact_uri=model_uri, dst_path=tmp))
        found = sorted(p.parent for p in local.rglob(CONFIG_FILE))
        if not found:
            raise FileNotFoundError(f"{model_uri} holds no adapter (adapter_config.json)")
        shutil.rmtree(dest, ignore_errors=True)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(local), str(dest))
        return dest / found[0].relative_to(local)


def localize_sources(spec: S, tracking_uri: str | None, source: str) -> S:
    """The spec with a registry `method.init_from` replaced by its downloaded folder (under
    `<output_dir>/sources/`), so workers and preflight see an ordinary adapter folder. A store that is not
    there (a sqlite file that does not exist) or does not answer is an error before anything is opened or
    written."""
    ref = spec.method.init_from
    if ref is None or not is_registry_uri(ref):
        return spec
    shown = redact(tracking_uri or "")
    try:
        check_store(tracking_uri or resolve_uri(None), "tracking.uri")
    except SpecError as exc:
        raise SpecError(
            source,
            [f"method.init_from: cannot fetch {ref} from {shown}: " + line.split(": ", 1)[-1] for line in exc.errors],
        ) from None
    dest = spec.train.output_dir / "sources" / re.sub(r"[^A-Za-z0-9_.-]+", "_", str(ref))
    try:
        folder = fetch_adapter(str(ref), tracking_uri, dest)
    except Exception as exc:  # noqa: BLE001 -- registry, network and file errors all mean the same to the user
        raise SpecError(
            source,
            [
                f"method.init_from: cannot fetch {ref} from {shown}: "
                f"{redact(str(exc).splitlines()[0][:300]) if str(exc) else type(exc).__name__}"
            ],
        ) from None
    return spec.model_copy(update={"method": spec.method.model_copy(update={"init_from": folder})})
