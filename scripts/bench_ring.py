"""Benchmark of the consistent-hash ring (p2pfs/ring.py): speed, balance and data movement.

Measures, for each member count:
- build time and token memory of a ring;
- preference_list lookups per second;
- balance: max/mean, min/mean and standard deviation/mean of each member's primary load, exact
  from arc lengths, and max/mean counted over sampled keys;
- data moved on one join and one leave, exact: the arcs between the two rings' tokens whose
  replica set changes, as a multiple of the ideal rf/(N+1) of the keys for a join and rf/N for a
  leave (Karger et al.: only the joiner's or leaver's share moves).
With --sweep-sets S, also max/mean at 100 members for several tokens-per-weight values over S
random sets of node ids: the measurement behind TOKENS_PER_WEIGHT_DEFAULT.

Run standalone (python scripts/bench_ring.py --help) or from scripts/bench.py as
bench_ring.main(argv). A benchmark measures; it never fails on speed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import statistics
import sys
import time
from array import array

import click

from p2pfs.ring import (
    HASH_SPACE_SIZE,
    TOKENS_PER_WEIGHT_DEFAULT,
    Ring,
    RingMember,
    member_tokens,
    range_size,
)

LOOKUPS_COUNT_DEFAULT = 200_000
KEYS_SAMPLED_DEFAULT = 1_000_000
SWEEP_TOKENS_PER_WEIGHT = (128, 256, 512, 1024, 1536, 2048, 4096)
SWEEP_MEMBERS = 100


def node_ids(count: int, rng: random.Random) -> list[str]:
    return [hashlib.sha256(rng.randbytes(32)).hexdigest() for _ in range(count)]


def balance(shares: list[float]) -> dict[str, float]:
    """Spread of per-member loads, each relative to the mean load."""
    mean = statistics.fmean(shares)
    return {
        "max_over_mean": max(shares) / mean,
        "min_over_mean": min(shares) / mean,
        "std_over_mean": statistics.pstdev(shares) / mean,
    }


def sampled_primary_counts(ring: Ring, keys_count: int, rng: random.Random) -> list[int]:
    counts = dict.fromkeys(ring.members, 0)
    for _ in range(keys_count):
        counts[ring.preference_list(rng.randbytes(32), 1)[0]] += 1
    return list(counts.values())


def owned_tokens(ring: Ring) -> list[tuple[int, str]]:
    """Every ``(token, node_id)`` of ``ring``, sorted, recomputed from its members."""
    return sorted(
        (token, member.node_id)
        for member in ring.members.values()
        for token in member_tokens(
            member.node_id, max(1, round(member.weight * ring.tokens_per_weight))
        )
    )


def primary_shares(ring: Ring) -> dict[str, float]:
    """Each member's exact primary share (rf 1): the arcs ending at its tokens."""
    positions = dict.fromkeys(ring.members, 0)
    tokens = owned_tokens(ring)
    previous = tokens[-1][0]
    for token, node_id in tokens:
        if token != previous:  # an empty arc belongs to the first of equal tokens
            positions[node_id] += range_size(previous, token)
        previous = token
    return {node_id: p / HASH_SPACE_SIZE for node_id, p in positions.items()}


def moved_fraction(old: Ring, new: Ring, rf: int) -> float:
    """Fraction of keys whose replica set at ``rf`` differs between ``old`` and ``new``, exact:
    both rings' preference lists are constant between consecutive tokens of either ring."""
    ends = sorted({t for t, _ in owned_tokens(old)} | {t for t, _ in owned_tokens(new)})
    moved = 0
    previous = ends[-1]
    for end in ends:
        if set(old.preference_list_at(end, rf)) != set(new.preference_list_at(end, rf)):
            moved += range_size(previous, end)
        previous = end
    return moved / HASH_SPACE_SIZE


def measure_size(
    members_count: int,
    *,
    rf: int,
    tokens_per_weight: int,
    lookups_count: int,
    keys_sampled: int,
    moves_count: int,
    rng: random.Random,
) -> dict[str, float]:
    ids = node_ids(members_count + moves_count, rng)
    members = [RingMember(n) for n in ids[:members_count]]
    joiners = [RingMember(n) for n in ids[members_count:]]

    started_s = time.perf_counter()
    ring = Ring(members, tokens_per_weight=tokens_per_weight)
    build_s = time.perf_counter() - started_s

    keys = [rng.randbytes(32) for _ in range(lookups_count)]
    started_s = time.perf_counter()
    for key in keys:
        ring.preference_list(key, rf)
    lookups_per_s = lookups_count / (time.perf_counter() - started_s)

    result: dict[str, float] = {
        "members": members_count,
        "tokens": ring.token_count,
        "token_bytes": ring.token_count * (array("Q").itemsize + array("I").itemsize),
        "build_s": build_s,
        "lookups_per_s": lookups_per_s,
    }
    result |= {f"arc_{k}": v for k, v in balance(list(primary_shares(ring).values())).items()}
    if keys_sampled:
        counts = sampled_primary_counts(ring, keys_sampled, rng)
        result["keys_sampled"] = keys_sampled
        result["sampled_max_over_mean"] = max(counts) / statistics.fmean(counts)

    join_multiples = []
    leave_multiples = []
    for joiner, leaver in zip(joiners, members):
        joined = Ring([*members, joiner], tokens_per_weight=tokens_per_weight)
        join_multiples.append(
            moved_fraction(ring, joined, rf) / (min(rf, members_count + 1) / (members_count + 1))
        )
        left = Ring([m for m in members if m != leaver], tokens_per_weight=tokens_per_weight)
        leave_multiples.append(
            moved_fraction(ring, left, rf) / (min(rf, members_count) / members_count)
        )
    if moves_count:
        result |= {
            "join_moved_over_ideal_mean": statistics.fmean(join_multiples),
            "join_moved_over_ideal_max": max(join_multiples),
            "leave_moved_over_ideal_mean": statistics.fmean(leave_multiples),
            "leave_moved_over_ideal_max": max(leave_multiples),
        }
    return result


def sweep(sets_count: int, rng: random.Random) -> list[dict[str, float]]:
    """Max/mean primary load at SWEEP_MEMBERS members, per tokens-per-weight, over random id sets."""
    rows = []
    id_sets = [node_ids(SWEEP_MEMBERS, rng) for _ in range(sets_count)]
    for tokens_per_weight in SWEEP_TOKENS_PER_WEIGHT:
        ratios = sorted(
            balance(
                list(
                    primary_shares(
                        Ring([RingMember(n) for n in ids], tokens_per_weight=tokens_per_weight)
                    ).values()
                )
            )["max_over_mean"]
            for ids in id_sets
        )
        rows.append(
            {
                "tokens_per_weight": tokens_per_weight,
                "sets": sets_count,
                "median": ratios[len(ratios) // 2],
                "p95": ratios[min(len(ratios) - 1, int(len(ratios) * 0.95))],
                "worst": ratios[-1],
                "over_1_10": sum(r > 1.10 for r in ratios) / len(ratios),
            }
        )
    return rows


def weighted(tokens_per_weight: int, rng: random.Random) -> list[dict[str, float]]:
    """Share of each member against its weight's share, weights 1:2:4."""
    weights = (1.0, 2.0, 4.0)
    members = [RingMember(n, weight=w) for n, w in zip(node_ids(3, rng), weights)]
    shares = primary_shares(Ring(members, tokens_per_weight=tokens_per_weight))
    return [
        {"weight": m.weight, "share": shares[m.node_id], "target": m.weight / sum(weights)}
        for m in members
    ]


def print_report(report: dict) -> None:
    echo = click.echo
    echo(
        f"ring: tokens_per_weight={report['tokens_per_weight']} rf={report['rf']} seed={report['seed']}"
    )
    echo(
        f"{'members':>8} {'tokens':>9} {'MiB':>6} {'build s':>8} {'lookups/s':>10} "
        f"{'max/mean':>9} {'min/mean':>9} {'std/mean':>9} {'sampled max/mean':>17}"
    )
    for row in report["sizes"]:
        sampled = (
            f"{row['sampled_max_over_mean']:.3f} ({row['keys_sampled']:,} keys)"
            if "keys_sampled" in row
            else "-"
        )
        echo(
            f"{row['members']:>8} {row['tokens']:>9} {row['token_bytes'] / 2**20:>6.1f} {row['build_s']:>8.2f} "
            f"{row['lookups_per_s']:>10,.0f} {row['arc_max_over_mean']:>9.3f} "
            f"{row['arc_min_over_mean']:>9.3f} {row['arc_std_over_mean']:>9.3f} {sampled:>17}"
        )
    echo("")
    echo(
        f"{'members':>8} {'join moved/ideal mean':>22} {'max':>6} {'leave moved/ideal mean':>23} {'max':>6}"
    )
    for row in report["sizes"]:
        if "join_moved_over_ideal_mean" in row:
            echo(
                f"{row['members']:>8} {row['join_moved_over_ideal_mean']:>22.3f} {row['join_moved_over_ideal_max']:>6.3f} "
                f"{row['leave_moved_over_ideal_mean']:>23.3f} {row['leave_moved_over_ideal_max']:>6.3f}"
            )
    echo("")
    echo("weights 1:2:4 (3 members), primary share vs target:")
    for row in report["weighted"]:
        echo(
            f"  weight {row['weight']:.0f}: share {row['share']:.4f} target {row['target']:.4f} ({row['share'] / row['target'] - 1:+.1%})"
        )
    if report["sweep"]:
        echo("")
        echo(f"max/mean at {SWEEP_MEMBERS} members over random id sets:")
        echo(
            f"{'tokens/weight':>14} {'sets':>5} {'median':>7} {'p95':>7} {'worst':>7} {'share > 1.10':>13}"
        )
        for row in report["sweep"]:
            echo(
                f"{row['tokens_per_weight']:>14} {row['sets']:>5} {row['median']:>7.3f} {row['p95']:>7.3f} "
                f"{row['worst']:>7.3f} {row['over_1_10']:>13.1%}"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_ring", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--members",
        default="10,100,1000",
        metavar="N,N,...",
        help="member counts (default 10,100,1000)",
    )
    parser.add_argument("--rf", type=int, default=3, help="replication factor (default 3)")
    parser.add_argument(
        "--tokens-per-weight", type=int, default=TOKENS_PER_WEIGHT_DEFAULT, metavar="T"
    )
    parser.add_argument(
        "--lookups",
        type=int,
        default=LOOKUPS_COUNT_DEFAULT,
        metavar="COUNT",
        help="timed lookups per size",
    )
    parser.add_argument(
        "--keys",
        type=int,
        default=KEYS_SAMPLED_DEFAULT,
        metavar="COUNT",
        help="keys sampled per size for balance (0: arc lengths only)",
    )
    parser.add_argument(
        "--moves", type=int, default=3, metavar="COUNT", help="joins and leaves measured per size"
    )
    parser.add_argument(
        "--sweep-sets",
        type=int,
        default=0,
        metavar="S",
        help="random id sets for the tokens-per-weight sweep (0: skip)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object instead of tables"
    )
    args = parser.parse_args(argv)

    rng = random.Random(args.seed)
    report = {
        "tokens_per_weight": args.tokens_per_weight,
        "rf": args.rf,
        "seed": args.seed,
        "sizes": [
            measure_size(
                int(n),
                rf=args.rf,
                tokens_per_weight=args.tokens_per_weight,
                lookups_count=args.lookups,
                keys_sampled=args.keys,
                moves_count=args.moves,
                rng=rng,
            )
            for n in args.members.split(",")
        ],
        "weighted": weighted(args.tokens_per_weight, rng),
        "sweep": sweep(args.sweep_sets, rng) if args.sweep_sets else [],
    }
    if args.json:
        click.echo(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
