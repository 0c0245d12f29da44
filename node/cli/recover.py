"""``haorch recover neo4j``: rebuild Neo4j from MariaDB (``node/recover.py``)."""

from __future__ import annotations

import click

from node.cli.common import config, emit, json_option, stderr, table


@click.group()
def recover() -> None:
    """Rebuild a store from the system of record (MariaDB)."""


@recover.command("neo4j")
@click.option("--page-size", type=click.IntRange(min=1, max=10_000), default=1000, show_default=True,
              help="Experiments created per Neo4j transaction.")
@json_option
def neo4j(page_size: int, as_json: bool) -> None:
    """Rebuild Neo4j (emptied, or its store deleted) from MariaDB while the cluster runs.

    \b
    Templates, then every live experiment's DAG with each task in its recorded state; then the leader resumes
    (it holds while Neo4j lacks the graph), and the finished experiments follow. Only what is missing is
    created: running it again is harmless. Progress on stderr.
    """
    from node.recover import recover_neo4j

    summary = recover_neo4j(config(), progress=lambda m: stderr.print(m, markup=False), page_size=page_size)

    def human(data: dict) -> None:
        rows = [{"experiments": name, **{k: data[name][k] for k in ("created", "present", "left_out", "tasks")},
                 "seconds": f"{data[name]['seconds']:.1f}"} for name in ("live", "finished")]
        table(rows, ["experiments", "created", "present", "left_out", "tasks", "seconds"])
        how = ("rebuilt" if data["rebuilt"] else "was whole") + (
            f"; the leader held {data['held_s']:.1f} s" if data["released"] else "")
        click.echo(f"neo4j: generation {data['generation'][:8]} {how}; {data['templates']} template version(s) "
                   f"created; {data['seconds']:.1f} s")
        for line in data["left_out"]:
            click.echo(f"left out: {line}")
    emit(summary.to_dict(), as_json, human)
