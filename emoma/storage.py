"""Where an experiment lives: a local (or NFS) folder, or any URI Ray Tune accepts (s3://, gs://, other pyarrow
filesystems; S3-compatible servers through the standard AWS_ENDPOINT_URL).

EmoMA's own files (manifest, Optuna journal, trials.csv, reports, model) are written in a local folder: for a
local experiment that is the experiment folder itself; for object storage a staging folder whose files are
uploaded after each write (an object PUT is atomic: a reader never sees half a file) and downloaded on resume.
Ray Tune writes its trial checkpoints and experiment state to the same place itself.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

from emoma.errors import UserError
from emoma.files import atomic_path

# The same path on every machine: restored Optuna and Tune state may name files here.
STAGING = Path(tempfile.gettempdir()) / "emoma-staging"
APPEND_ONLY = ("optuna_study.log",)  # journals only grow: the longer copy is the newer one


def is_uri(path: str) -> bool:
    return "://" in str(path) and not str(path).startswith("file://")


class ExperimentStorage:
    """One experiment's folder: `local` is where EmoMA writes; `uri` is the experiment's home."""

    def __init__(self, storage_path: str, name: str, create: bool = True):
        self.name = name
        if is_uri(storage_path):
            import pyarrow.fs

            self.parent = storage_path.rstrip("/")
            self.uri = f"{self.parent}/{name}"
            try:
                self.fs, self.remote = pyarrow.fs.FileSystem.from_uri(self.uri)
            except Exception as err:  # pyarrow raises ArrowInvalid / OSError for unknown schemes and bad buckets
                raise UserError(f"--storage-path {storage_path}: {str(err).splitlines()[0]}") from None
            key = hashlib.sha256(self.uri.encode()).hexdigest()[:12]
            self.local = STAGING / f"{name}-{key}"
        else:
            self.parent = str(Path(storage_path).expanduser().resolve())
            self.uri = str(Path(self.parent) / name)
            self.fs = self.remote = None
            self.local = Path(self.uri)
        if create:
            self.local.mkdir(parents=True, exist_ok=True)

    @property
    def remote_storage(self) -> bool:
        return self.fs is not None

    def exists(self, relative: str) -> bool:
        if not self.remote_storage:
            return (self.local / relative).exists()
        return self._info(relative) is not None

    def _info(self, relative: str):
        """The stored file's pyarrow FileInfo, or None when there is none."""
        import pyarrow.fs

        try:
            info = self.fs.get_file_info(f"{self.remote}/{relative}")
        except OSError as err:
            raise UserError(
                f"cannot reach {self.uri} ({str(err).splitlines()[0]}): check --storage-path and "
                "the credentials (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...)"
            ) from None
        return None if info.type == pyarrow.fs.FileType.NotFound else info

    def upload(self, *relatives: str) -> None:
        """Copy these files (paths relative to the experiment) from the local folder to the experiment's home."""
        if not self.remote_storage:
            return
        for relative in relatives:
            source = self.local / relative
            if not source.is_file():
                continue
            self.fs.create_dir(f"{self.remote}/{Path(relative).parent}".rstrip("/."), recursive=True)
            with source.open("rb") as f, self.fs.open_output_stream(f"{self.remote}/{relative}") as out:
                out.write(f.read())

    def upload_all(self) -> None:
        self.upload(
            *(
                str(p.relative_to(self.local))
                for p in self.local.rglob("*")
                if p.is_file() and not p.name.startswith(".")
            )
        )

    def download(self, *relatives: str) -> None:
        """Fetch these files from the experiment's home into the local folder (missing ones are skipped; a
        local journal longer than the stored one, written before a crash, is kept)."""
        if not self.remote_storage:
            return
        for relative in relatives:
            info = self._info(relative)
            if info is None:
                continue
            target = self.local / relative
            if relative in APPEND_ONLY and target.is_file() and target.stat().st_size > info.size:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)  # the staging folder only
            with self.fs.open_input_stream(f"{self.remote}/{relative}") as f, atomic_path(target) as tmp:
                tmp.write_bytes(f.read())

    def download_folder(self, relative: str) -> None:
        """Fetch every file below the folder `relative` of the experiment's home (nothing when there is none)."""
        if not self.remote_storage:
            return
        import pyarrow.fs

        selector = pyarrow.fs.FileSelector(f"{self.remote}/{relative}", allow_not_found=True, recursive=True)
        infos = self.fs.get_file_info(selector)
        prefix = f"{self.remote}/"
        self.download(*(i.path.removeprefix(prefix) for i in infos if i.type == pyarrow.fs.FileType.File))

    def check_writable(self) -> None:
        """Fail before any work when the experiment's home cannot be written."""
        if not self.remote_storage:
            return
        probe = ".emoma-write-check"
        try:
            self.fs.create_dir(self.remote, recursive=True)
            with self.fs.open_output_stream(f"{self.remote}/{probe}") as out:
                out.write(b"ok")
            self.fs.delete_file(f"{self.remote}/{probe}")
        except OSError as err:
            raise UserError(
                f"cannot write to {self.uri} ({str(err).splitlines()[0]}): check --storage-path and "
                "the credentials (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...)"
            ) from None
