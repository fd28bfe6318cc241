"""What the model calls of traced runs used and cost, from their chat spans (one per
``ctx.llm`` call: ``operation = 'chat'``, the GenAI attributes in the ``attributes`` JSON).

=======================  ==========================================================
:func:`llm_costs`        per agent, model, tenant, correlation id or policy: calls,
                         failed calls, tokens, cost, unpriced calls, re-asks, requests
:func:`run_llm_totals`   per run: the same figures summed over the run's calls
=======================  ==========================================================

``cost_usd`` sums the calls whose cost is known (``bb.llm.cost``, from the price tables):
a call the tables could not price counts in ``unpriced`` instead, and ``cost_usd`` is None
when no call of the group was priced. A failed call counts what it used before it failed
(its tokens and cost are in the sums, and it counts in ``failed``).

The *policy* of a call is the scheduling policy the agent ran under, in this order:

1. the policy named by the ``bb.policy.decision`` of the process span the call ran in (its
   parent: ``admitted srpt why=...`` names ``srpt``);
2. else (the attempt ran for a batch's or join's release, or after a retry-budget deferral,
   whose decisions name no ready-queue policy) the policy named most often by the decisions
   of the same agent's process spans in the same worker (a runner keeps one policy);
3. else the run's policy label (``runs.policy``, set by whoever started the run: an
   experiment names it, a plain worker records ``fifo`` whatever its agents ran).

The decisions come first because they are what each runner actually used: agents of one
worker may run different policies, and the run's label is only what its starter said.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from blackboard.errors import TraceError
from observability.duck import Connection, check_run, query

if TYPE_CHECKING:
    import pyarrow as pa

#: ``--by`` name -> (output column, the expression over the calls below).
GROUPS: Final[dict[str, tuple[str, str]]] = {
    "agent": ("agent", "agent"),
    "model": ("model", "model"),
    "tenant": ("tenant", "tenant"),
    "correlation": ("correlation_id", "correlation_id"),
    "policy": ("policy", "policy"),
}


def _attr(name: str, cast: str | None = None) -> str:
    """The SQL of one attribute of a chat span (its keys have dots: a quoted JSON path)."""
    text = f"""c.attributes->>'$."{name}"'"""
    return f"TRY_CAST({text} AS {cast})" if cast is not None else text


#: The figures ``blackboard traces cost`` prints as text (``--json`` gives them all).
TEXT_COLUMNS: Final = ("calls", "failed", "input_tokens", "output_tokens", "cost_usd",
                       "unpriced", "reasks")  # fmt: skip

#: One row per chat span of the runs in ``$1`` (a list), with what it used.
_CALLS = f"""SELECT c.run_id, c.worker, c.trace_id, c.parent_span_id, c.agent, c.tenant,
        c.correlation_id,
        coalesce({_attr("bb.llm.model")}, {_attr("gen_ai.request.model")}) AS model,
        c.status = 'ERROR' AS is_failed,
        coalesce({_attr("gen_ai.usage.input_tokens", "BIGINT")}, 0) AS n_input,
        coalesce({_attr("gen_ai.usage.output_tokens", "BIGINT")}, 0) AS n_output,
        coalesce({_attr("bb.llm.cache_read_tokens", "BIGINT")}, 0) AS n_cache_read,
        coalesce({_attr("bb.llm.cache_write_tokens", "BIGINT")}, 0) AS n_cache_write,
        coalesce({_attr("bb.llm.reasks", "BIGINT")}, 0) AS n_reasks,
        coalesce({_attr("bb.llm.requests", "BIGINT")}, 0) AS n_requests,
        {_attr("bb.llm.cost", "DOUBLE")} AS usd
    FROM spans c WHERE list_contains($1, c.run_id) AND c.operation = 'chat'"""

#: The calls with their policy (see the module's docstring for the order).
_CALLS_WITH_POLICY = rf"""WITH decided AS (
        SELECT run_id, worker, trace_id, span_id, agent,
            nullif(regexp_extract(policy_decision, '^\S+ (\S+) why=', 1), '') AS named
        FROM spans WHERE list_contains($1, run_id) AND operation = 'process'),
    per_agent AS (SELECT run_id, worker, agent, mode(named) AS named FROM decided
        WHERE named IS NOT NULL GROUP BY run_id, worker, agent),
    calls AS ({_CALLS})
    SELECT calls.*, coalesce(d.named, a.named, r.policy) AS policy
    FROM calls
    LEFT JOIN decided d ON d.run_id = calls.run_id AND d.trace_id = calls.trace_id
        AND d.span_id = calls.parent_span_id
    LEFT JOIN per_agent a ON a.run_id = calls.run_id AND a.worker = calls.worker
        AND a.agent = calls.agent
    LEFT JOIN runs r ON r.run_id = calls.run_id"""

#: The figures of a group of calls (the same in both analyses).
_FIGURES = """count(*) AS calls, count(*) FILTER (WHERE is_failed) AS failed,
    sum(n_input)::BIGINT AS input_tokens, sum(n_output)::BIGINT AS output_tokens,
    fsum(usd) AS cost_usd, count(*) FILTER (WHERE usd IS NULL) AS unpriced,
    sum(n_reasks)::BIGINT AS reasks, sum(n_requests)::BIGINT AS requests,
    sum(n_cache_read)::BIGINT AS cache_read_tokens,
    sum(n_cache_write)::BIGINT AS cache_write_tokens"""


def llm_costs(con: Connection, run_ids: Sequence[str], by: str = "agent") -> pa.Table:
    """Model calls of the runs ``run_ids`` (summed over them) per ``by`` (one of
    :data:`GROUPS`): calls, failed, input and output tokens, cost in USD (priced calls),
    unpriced calls, re-asks, requests (a call's first request, its re-asks and its waits out
    of a 429), cache read and write tokens; most expensive first. No rows when the runs made
    no model calls.

    Raises:
        TraceError: ``by`` is not a grouping, no run is given, or a run is missing.
    """
    if by not in GROUPS:
        raise TraceError(f"unknown grouping {by!r} for cost; choose one of {', '.join(GROUPS)}")
    if not run_ids:
        raise TraceError("cost needs at least one run")
    for run_id in run_ids:
        check_run(con, run_id)
    column, expr = GROUPS[by]
    source = _CALLS_WITH_POLICY if by == "policy" else _CALLS
    return query(
        con,
        f"""WITH grouped AS ({source})
        SELECT {expr} AS "{column}", {_FIGURES}
        FROM grouped GROUP BY 1
        ORDER BY cost_usd DESC NULLS LAST, calls DESC, 1 NULLS LAST""",
        [list(run_ids)],
    )


def run_llm_totals(con: Connection) -> pa.Table:
    """Per run opened (every one, with zeros and a None cost when it made no model call):
    ``llm_calls``, ``llm_failed``, ``llm_input_tokens``, ``llm_output_tokens``,
    ``llm_cost_usd`` and ``llm_unpriced``, as :func:`llm_costs` counts them."""
    return query(
        con,
        f"""WITH calls AS ({_CALLS}),
        per_run AS (SELECT run_id, {_FIGURES} FROM calls GROUP BY run_id)
        SELECT r.run_id, coalesce(p.calls, 0) AS llm_calls, coalesce(p.failed, 0) AS llm_failed,
            coalesce(p.input_tokens, 0) AS llm_input_tokens,
            coalesce(p.output_tokens, 0) AS llm_output_tokens, p.cost_usd AS llm_cost_usd,
            coalesce(p.unpriced, 0) AS llm_unpriced
        FROM runs r LEFT JOIN per_run p USING (run_id) ORDER BY r.started_at, r.run_id""",
        [[row[0] for row in con.execute("SELECT run_id FROM runs").fetchall()]],
    )
