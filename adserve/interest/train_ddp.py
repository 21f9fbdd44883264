"""Train from a behaviour file, in one process or under torchrun with DistributedDataParallel.

    python -m adserve.interest.train_ddp --events events.csv --out models
    torchrun --nproc_per_node=2 -m adserve.interest.train_ddp --events events.csv --out models

Every process reads the file and builds the same split; batches are sharded by rank, gradients
all-reduced (gloo on CPU, nccl on CUDA), validation NDCG all-reduced so every rank stops at the
same epoch; rank 0 writes `<out>/interest/<version>/` and prints its path.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from datetime import timedelta

import torch
import torch.distributed as dist

from adserve.interest.data import ItemVocabulary, read_behaviour_file, sequences_by_user
from adserve.interest.network import InterestConfig
from adserve.interest.training import TrainConfig, default_model_config, train_interest

__all__ = ["main"]

# slotted dataclasses keep no class-level defaults, so read them from default instances
_TRAIN = TrainConfig()
_MODEL = InterestConfig()


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--events", required=True, help="CSV or Parquet: user_id,item_id,timestamp[,type,category,price]"
    )
    parser.add_argument(
        "--out", required=True, help="models root; the version goes to <out>/interest/<version>/"
    )
    parser.add_argument("--version", default=None, help="version name (default: UTC time)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=_TRAIN.max_epochs)
    parser.add_argument("--patience", type=int, default=_TRAIN.patience)
    parser.add_argument("--batch-size", type=int, default=_TRAIN.batch_size)
    parser.add_argument("--lr", type=float, default=_TRAIN.lr)
    parser.add_argument("--hidden", type=int, default=_MODEL.hidden)
    parser.add_argument("--layers", type=int, default=_MODEL.n_layers)
    parser.add_argument("--heads", type=int, default=_MODEL.n_heads)
    parser.add_argument("--dropout", type=float, default=None, help="default: 0.2, or 0.5 for sparse data")
    parser.add_argument("--max-len", type=int, default=_MODEL.max_len)
    parser.add_argument("--warm-start", default=None, help="previous version directory")
    parser.add_argument("--device", default=None)
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        use_cuda = torch.cuda.is_available() and args.device != "cpu"
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=timedelta(minutes=10))
    try:
        rank = dist.get_rank() if distributed else 0
        sequences = sequences_by_user(read_behaviour_file(args.events))
        train_config = TrainConfig(
            seed=args.seed,
            max_epochs=args.epochs,
            patience=args.patience,
            batch_size=args.batch_size,
            lr=args.lr,
            device=args.device,
            progress=not args.no_progress,
        )
        # the vocabulary is rebuilt inside train_interest; here only the architecture is chosen
        vocab = ItemVocabulary.from_sequences(sequences[u] for u in sorted(sequences))
        mean_length = sum(len(events) for events in sequences.values()) / max(len(sequences), 1)
        model_config = replace(
            default_model_config(vocab, mean_length),
            hidden=args.hidden,
            n_layers=args.layers,
            n_heads=args.heads,
            max_len=args.max_len,
        )
        if args.dropout is not None:
            model_config = replace(model_config, dropout=args.dropout)
        result = train_interest(
            sequences, (), model_config=model_config, train_config=train_config, warm_start=args.warm_start
        )
        if rank == 0:
            directory = result.save(args.out, args.version)
            print(directory, flush=True)
        if distributed:
            dist.barrier()
    finally:
        if distributed:
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
