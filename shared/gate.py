"""The quality gate: whether a registered fine-tune may get an endpoint. Rules as data, first match wins.

Evidence, gathered by `job_events` before the deploy message:
- `eval_loss`: the fine-tuned model's mean loss per assistant token on the test split;
- `base_eval_loss`: the baseline on the same rows. Locally the base model itself, evaluated by the job.
  On Azure the chat-completion pipeline never evaluates the base model (its evaluation steps are commented
  out), so the job is submitted with several evaluations per epoch and the baseline is the run's first
  `eval_loss`: the model after the first slice of training, a lower bound on what the base model scores,
  so the improvement the gate sees is a lower bound too (`shared/ml/metrics.py`);
- `serving_eval_loss`: the eval loss of a model already serving a flow of the same dataset version (the same
  test rows, so like is compared with like), if one serves.

Verdicts: `passed` and `off` send the deploy message; `failed` records why and sends nothing; `retry` raises
so the event is delivered again (metrics can appear minutes after the completion event).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Evidence:
    eval_loss: float | None
    base_eval_loss: float | None
    min_improvement: float  # relative: 0.02 = the eval loss must fall by at least 2 % of the baseline
    serving_eval_loss: float | None = None
    serving_model: str = ""
    switched_off_by: str = ""  # "request" | "setting" | "" (the gate is on)
    waited_s: float = 0.0  # since the job ended, while metrics are missing
    metrics_wait_s: float = 0.0  # how long missing metrics are waited for before the flow fails

    @property
    def improvement(self) -> float:
        """Relative fall of the eval loss from the baseline (negative: it rose)."""
        return (self.base_eval_loss - self.eval_loss) / self.base_eval_loss

    def figures(self) -> dict:
        out = {"eval_loss": self.eval_loss, "base_eval_loss": self.base_eval_loss,
               "min_improvement": self.min_improvement}
        if _finite(self.eval_loss, self.base_eval_loss) and self.base_eval_loss > 0:
            out["improvement"] = round(self.improvement, 6)
        if self.serving_eval_loss is not None:
            out.update(serving_eval_loss=self.serving_eval_loss, serving_model=self.serving_model)
        return out


def _finite(*values) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def _missing(e: Evidence) -> bool:
    return e.eval_loss is None or e.base_eval_loss is None


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


@dataclass(frozen=True)
class Rule:
    name: str
    applies: Callable[[Evidence], bool]
    verdict: str  # passed | failed | off | retry
    reason: Callable[[Evidence], str]


RULES: tuple[Rule, ...] = (
    Rule("switched-off", lambda e: bool(e.switched_off_by), "off",
         lambda e: f"gate switched off by the {e.switched_off_by}: deployed without judging the metrics"),
    Rule("metrics-late", lambda e: _missing(e) and e.waited_s < e.metrics_wait_s, "retry",
         lambda e: f"{'eval_loss' if e.eval_loss is None else 'base_eval_loss'} not reported yet, "
                   f"{e.waited_s:.0f} s after the job ended (waiting up to {e.metrics_wait_s:.0f} s)"),
    Rule("metrics-missing", _missing, "failed",
         lambda e: f"{'eval_loss' if e.eval_loss is None else 'base_eval_loss'} never reported "
                   f"({e.waited_s:.0f} s after the job ended): the run logged no evaluation to judge it by"),
    Rule("not-finite", lambda e: not _finite(e.eval_loss, e.base_eval_loss) or e.base_eval_loss <= 0, "failed",
         lambda e: f"eval loss {e.eval_loss} against baseline {e.base_eval_loss}: not a finite positive figure "
                   f"(the run diverged)"),
    Rule("no-improvement", lambda e: e.improvement < e.min_improvement, "failed",
         lambda e: f"eval loss {e.base_eval_loss:.4f} -> {e.eval_loss:.4f} ({_pct(e.improvement)} better), "
                   f"needs at least {_pct(e.min_improvement)} (TUNEFLOW_GATE_MIN_IMPROVEMENT)"),
    Rule("worse-than-serving", lambda e: e.serving_eval_loss is not None and e.eval_loss > e.serving_eval_loss,
         "failed",
         lambda e: f"eval loss {e.eval_loss:.4f} is worse than {e.serving_eval_loss:.4f} of {e.serving_model}, "
                   f"which serves the same dataset version"),
    Rule("passed", lambda e: True, "passed",
         lambda e: f"eval loss {e.base_eval_loss:.4f} -> {e.eval_loss:.4f} ({_pct(e.improvement)} better, "
                   f"at least {_pct(e.min_improvement)} needed)"
                   + (f", not worse than {e.serving_model} ({e.serving_eval_loss:.4f})"
                      if e.serving_eval_loss is not None else "")),
)


@dataclass(frozen=True)
class Verdict:
    verdict: str
    rule: str
    reason: str
    figures: dict

    @property
    def deploys(self) -> bool:
        return self.verdict in ("passed", "off")

    def as_detail(self) -> dict:
        return {"verdict": self.verdict, "rule": self.rule, "reason": self.reason, **self.figures}


def judge(evidence: Evidence, rules: tuple[Rule, ...] = RULES) -> Verdict:
    for rule in rules:
        if rule.applies(evidence):
            return Verdict(rule.verdict, rule.name, rule.reason(evidence), evidence.figures())
    raise AssertionError("the last rule always applies")


def as_float(value) -> float | None:
    """A metric as the gate reads it: a number (or numeric text, as a tag holds it), else None."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
