"""Reading back what the trackers wrote, each with the tool's own reader or record format.

- TensorBoard: its ``EventAccumulator`` over the event files.
- MLflow: ``MlflowClient`` on the store.
- wandb: an offline run keeps everything in its ``run-<id>.wandb`` transaction log, records
  of wandb's own protobuf ``Record`` framed as a LevelDB log (wandb 0.31 ships no reader for
  it in Python; ``wandb sync`` uploads it). ``wandb_records`` unframes it and parses each
  record with wandb's own ``wandb_internal_pb2``.
"""

import json
import struct
from pathlib import Path
from typing import Dict, List

BLOCK = 32768  # LevelDB log block
HEADER = 7  # ":W&B" + magic + version, then each record's crc32 (4), length (2), type (1)


def tensorboard_scalars(folder: Path) -> Dict[str, List[tuple]]:
    """tag -> [(step, value)] of every scalar under ``folder`` (one run's event files)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def tensorboard_tags(folder: Path) -> Dict[str, list]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"images": 0, "tensors": 0})
    acc.Reload()
    return acc.Tags()


def wandb_records(path: Path) -> list:
    """Every record of one ``.wandb`` file, as wandb's own protobuf messages."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a wandb transaction log"
    pos, chunks, pending = HEADER, [], b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # a block's tail too short for a record header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 1:  # full
            chunks.append(chunk)
        elif kind == 2:  # first
            pending = chunk
        elif kind == 3:  # middle
            pending += chunk
        elif kind == 4:  # last
            chunks.append(pending + chunk)
    records = []
    for chunk in chunks:
        record = pb.Record()
        record.ParseFromString(chunk)
        records.append(record)
    return records


def wandb_run(folder: Path) -> Dict[str, object]:
    """An offline run folder's run record, history (step -> {key: value}) and summary."""
    out = {"run": None, "history": {}, "summary": {}}
    for path in sorted(Path(folder).glob("run-*.wandb")):
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                out["run"] = record.run
            elif kind == "history":
                items = {i.key or "/".join(i.nested_key): json.loads(i.value_json)
                         for i in record.history.item}
                out["history"].setdefault(items["_step"], {}).update(items)
            elif kind == "summary":
                out["summary"].update({u.key or "/".join(u.nested_key): json.loads(u.value_json)
                                       for u in record.summary.update})
    return out


def mlflow_client(store: Path):
    """MLflow's client on a file store (MLflow 3 reads one only when told it may)."""
    import os

    from mlflow.tracking import MlflowClient

    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    return MlflowClient(tracking_uri=Path(store).resolve().as_uri())
