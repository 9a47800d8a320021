"""The fraud handbook's transaction features, bit-identical offline and streaming.

Per transaction i (time t, id) and window w in ``cfg.windows_days``, with D the terminal delay:

- ``amount``; ``is_weekend`` (Saturday/Sunday); ``is_night`` (hour <= 6);
- ``customer_nb_tx_{w}d`` / ``customer_avg_amount_{w}d``: count and mean amount of the
  customer's transactions j with t - w days < ts_j <= t and (ts_j, id_j) <= (t, id): the
  window holds the current transaction, and ties are broken by transaction id;
- ``terminal_nb_tx_{w}d``: the terminal's transactions with t - D - w days < ts_j <= t - D;
- ``terminal_risk_{w}d``: the share of those with a fraud label that arrived by t
  (label_ts_j <= t), 0.0 when there are none. No feature ever sees a label before it arrives.

Then fraudpipe's own (``cfg.extended``), with W the longest window:

- ``customer_amount_ratio_{w}d``: amount over the mean amount of the customer's earlier
  transactions in the window (those above but the current one), -1.0 when there are none (or
  they sum to 0): a card paying far more than it usually does (a stolen card's big spend);
- ``customer_amount_ratio_settled``: amount over the mean amount of the customer's settled
  transactions, those with t - W days < ts_j <= t - D (and before the current one), old enough
  for their labels to have arrived; -1.0 when there are none (or they sum to 0). Unlike the
  windows above, this baseline holds none of the card's latest payments, which a thief may
  have made and no label has yet flagged;
- ``customer_recent_avg_ratio``: the mean amount of the customer's unsettled transactions (the
  rest of the W window, the current one included) over the mean of the settled ones, -1.0
  when either is empty (or the settled ones sum to 0): a card whose spending has just risen;
- ``terminal_first_fraud_days`` / ``terminal_last_fraud_days``: days from the terminal's
  earliest / latest known fraud to t, among its transactions with t - D - W days < ts_j <= t - D
  whose fraud label arrived by t (the ``terminal_risk_{W}d`` frauds), -1.0 when there are none:
  how long a terminal has been known compromised, and whether it still is;
- ``terminal_last_tx_days``: days from the terminal's latest transaction of that window to t
  (D + W when there is none); ``terminal_risk_since_first_fraud``: the share of known frauds
  among the window's transactions from the first known fraud on (-1.0 without one); and
  ``terminal_last_tx_fraud``: 1.0 when the latest of them is a known fraud;
- ``terminal_fraud_avg_amount``: the mean amount of those known frauds, -1.0 when there are
  none. A compromised terminal (a skimmer) defrauds ordinary payments of many cards, while a
  stolen card's big spends make frauds at whatever terminal it is used: this tells the two
  apart.

Everything is counted by :mod:`fraudpipe.kernel` (written once against the array API, so it runs
on numpy or cupy) with sorted arrays and binary searches over int64 (key, time) codes, never per
row, and amounts are summed in integer cents (amounts count to the cent). So a feature does not
depend on which older rows the history happens to hold, nor on the device:
:func:`compute_features` over the whole history and :class:`fraudpipe.history.StreamingFeatures`
over one batch and its slice of the event log agree to the bit.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl

from fraudpipe import kernel
from fraudpipe.config import FeatureSettings
from fraudpipe.devices import CPU, to_numpy
from fraudpipe.schema import LABELS, MAX_AMOUNT, TRANSACTIONS, BadBatch, check

I64 = npt.NDArray[np.int64]


_CUSTOMER_EXTENDED = ("customer_amount_ratio_settled", "customer_recent_avg_ratio")
_TERMINAL_EXTENDED = (
    "terminal_first_fraud_days",
    "terminal_last_fraud_days",
    "terminal_last_tx_days",
    "terminal_risk_since_first_fraud",
    "terminal_last_tx_fraud",
    "terminal_fraud_avg_amount",
)


def _windows(cfg: FeatureSettings) -> list[int]:
    """The windows in days, checked: feature names must be unique and windows non-empty."""
    ws = list(cfg.windows_days)
    if len(set(ws)) != len(ws) or min(ws) < 1:
        raise ValueError(f"windows_days must be distinct whole days >= 1, got {ws}")
    return ws


def feature_names(cfg: FeatureSettings) -> list[str]:
    """The model's feature columns, in the handbook's order (per window: count, then mean/risk)."""
    ws = _windows(cfg)
    names = ["amount", "is_weekend", "is_night"]
    for w in ws:
        names += [f"customer_nb_tx_{w}d", f"customer_avg_amount_{w}d"]
    for w in ws:
        names += [f"terminal_nb_tx_{w}d", f"terminal_risk_{w}d"]
    if cfg.extended:
        names += [f"customer_amount_ratio_{w}d" for w in ws]
        names += [*_CUSTOMER_EXTENDED, *_TERMINAL_EXTENDED]
    return names


def lookback(cfg: FeatureSettings) -> dt.timedelta:
    """How far before a batch's first transaction its history must reach (terminal windows)."""
    return dt.timedelta(days=cfg.terminal_delay_days + max(_windows(cfg)))


def output_schema(cfg: FeatureSettings) -> dict[str, pl.DataType]:
    """The columns of a features batch: the transaction's, then every feature."""
    extra = [n for n in feature_names(cfg) if n not in TRANSACTIONS]  # `amount` is there already
    return {**TRANSACTIONS, **{n: pl.Float64() for n in extra}}


def valid_transactions(tx: pl.DataFrame, what: str) -> pl.DataFrame:
    """tx as TRANSACTIONS columns; BadBatch on nulls, repeated ids, or an amount outside
    [0, MAX_AMOUNT] (so that integer-cent sums stay exact), naming a row that breaks it."""
    tx = check(tx, TRANSACTIONS, what)
    nulls = [c for c, n in tx.drop("created_at").null_count().row(0, named=True).items() if n]
    if nulls:
        raise BadBatch(f"{what}: null values in {nulls}")
    amount = tx["amount"]
    bad = ~amount.is_between(0.0, MAX_AMOUNT).fill_null(False)  # NaN and inf are outside too
    if bad.any():
        row = tx.filter(bad).row(0, named=True)
        raise BadBatch(
            f"{what}: amount must be a number from 0 to {MAX_AMOUNT:g}; {int(bad.sum())} row(s) "
            f"are not, e.g. transaction {row['transaction_id']} with amount {row['amount']!r}"
        )
    if tx["transaction_id"].n_unique() != tx.height:
        raise BadBatch(f"{what}: transaction_id must be unique")
    return tx


def compute_features(
    tx: pl.DataFrame,
    labels: pl.DataFrame,
    cfg: FeatureSettings,
    query_ids: pl.Series | None = None,
    xp: Any = None,
) -> pl.DataFrame:
    """Features of the query rows (all of tx when query_ids is None), history = tx.

    tx holds TRANSACTIONS columns with unique transaction ids; labels holds LABELS columns
    (labels of transactions absent from tx are ignored; a transaction with several labels
    counts as fraud from its first fraud label). Returns the TRANSACTIONS columns followed by
    the features, in the order of tx, or of query_ids when given. The kernel runs in the
    array namespace xp (``Device.xp``; numpy when None).
    """
    tx = valid_transactions(tx, "transactions")
    labels = check(labels, LABELS, "labels")
    if query_ids is None:
        rows = np.arange(tx.height, dtype=np.int64)
    else:
        found = (
            pl.DataFrame({"transaction_id": query_ids.cast(pl.Int64)})
            .join(
                tx.select("transaction_id").with_row_index("row"),
                on="transaction_id",
                how="left",
                maintain_order="left",
            )
            .get_column("row")
        )
        if found.null_count():
            raise ValueError(f"compute_features: {found.null_count()} query id(s) not in tx")
        rows = found.cast(pl.Int64).to_numpy()
    frauds = labels.filter(pl.col("is_fraud") == 1).select("transaction_id", "label_ts")
    return compute_rows(tx, frauds, cfg, rows, xp)


def compute_rows(
    tx: pl.DataFrame, frauds: pl.DataFrame, cfg: FeatureSettings, rows: I64, xp: Any = None
) -> pl.DataFrame:
    """Features of tx[rows], tx being valid_transactions; frauds holds (transaction_id,
    label_ts) of fraud labels. The kernel runs in namespace xp (numpy when None)."""
    if rows.size == 0:
        return pl.DataFrame(schema=output_schema(cfg))
    xp = xp if xp is not None else CPU.xp
    inputs = kernel.Inputs(**tx_columns(tx, xp), **fraud_columns(frauds, xp), rows=xp.asarray(rows))
    return with_features(tx[rows], inputs, cfg, xp)


def tx_columns(tx: pl.DataFrame, xp: Any) -> dict[str, Any]:
    """The kernel's transaction columns of tx (kernel.Inputs), as arrays of namespace xp."""
    cols = {
        name: xp.asarray(tx[name].to_physical().to_numpy())
        for name in ("ts", "transaction_id", "customer_id", "terminal_id")
    }
    cols["cents"] = xp.asarray(np.rint(tx["amount"].to_numpy() * 100).astype(np.int64))
    return cols


def fraud_columns(frauds: pl.DataFrame, xp: Any) -> dict[str, Any]:
    """The kernel's fraud label columns of frauds (transaction_id, label_ts)."""
    return {
        "fraud_id": xp.asarray(frauds["transaction_id"].to_numpy()),
        "fraud_label_ts": xp.asarray(frauds["label_ts"].to_physical().to_numpy()),
    }


def with_features(
    query: pl.DataFrame, inputs: kernel.Inputs, cfg: FeatureSettings, xp: Any
) -> pl.DataFrame:
    """query (the rows inputs.rows names, in that order) with the kernel's features."""
    cols = kernel.features(xp, inputs, _windows(cfg), cfg.terminal_delay_days, cfg.extended)
    return query.with_columns(
        pl.Series(name, to_numpy(v), dtype=pl.Float64) for name, v in cols.items()
    )
