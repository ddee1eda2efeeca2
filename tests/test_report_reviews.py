"""`pgwarden report` on approval steps: requests, outcomes, approval rate and time to decide,
by rule and by approver, from the review_* events the broker writes."""

from __future__ import annotations

from typing import Any

from proxy.approvals.book import ApprovalBook
from proxy.approvals.model import Approver
from proxy.identity import Identity
from proxy.policy.review import ReviewSpec
from proxy.review.render_text import render_text
from proxy.review.report import build_report

DELETES = ReviewSpec("review-deletes", frozenset({"carol"}), (("dba", frozenset({"bob"})),),
                     approvals=1, break_glass=(("oncall", frozenset({"dave"})),))  # fmt: skip
DROPS = ReviewSpec("review-drops", frozenset({"carol"}), (), approvals=2)
WHO = Identity("alice", "app", session_id="s-1")


def events() -> list[dict[str, Any]]:
    book = ApprovalBook()
    out: list[dict[str, Any]] = []

    def run(step: tuple[Any, list[Any]]) -> str:
        request, records = step
        out.extend(r.as_event("p") for r in records)
        return str(request.id)

    def ask(spec: ReviewSpec, at: float) -> str:
        return run(book.open(spec=spec, text=f"x{at}", params=(), identity=WHO, statement="s",
                             now=at))  # fmt: skip

    one = ask(DELETES, 0)
    run(book.vote(one, Approver("bob"), True, "", 10))  # approved after 10 s
    two = ask(DELETES, 100)
    run(book.vote(two, Approver("carol"), False, "no", 130))  # denied after 30 s
    three = ask(DELETES, 200)
    run(book.vote(three, Approver("dave"), True, "incident", 202, break_glass=True))
    four = ask(DELETES, 300)
    out.extend(r.as_event("p") for _r, recs in book.expire_due(300 + DELETES.timeout) for r in recs)
    five = ask(DROPS, 400)
    run(book.withdraw(five, "the client cancelled the statement", 405))
    ask(DROPS, 500)  # still pending
    assert four
    return out


def test_approvals_by_rule_and_by_approver() -> None:
    report = build_report(events())
    deletes, drops = report.reviews
    assert (deletes.rule, deletes.requests, deletes.approved, deletes.denied, deletes.expired) == (
        "review-deletes", 4, 2, 1, 1,
    )  # fmt: skip
    assert (deletes.withdrawn, deletes.pending, deletes.break_glass) == (0, 0, 1)
    assert deletes.approval_rate == 0.5  # 2 of approved + denied + expired
    assert deletes.median_decide_s == 10.0  # median of 10, 30, 2
    assert (drops.requests, drops.withdrawn, drops.pending, drops.approval_rate) == (2, 1, 1, None)
    people = {a.approver: a for a in report.approvers}
    assert (people["bob"].approvals, people["carol"].denials, people["dave"].break_glass) == (
        1,
        1,
        1,
    )
    assert people["carol"].median_decide_s == 30.0
    text = render_text(report)
    assert "Approval requests by rule" in text and "Approval decisions by approver" in text
    assert "50 %" in text and "10.0 s" in text
    assert report.as_dict()["reviews"][0]["rule"] == "review-deletes"


def test_no_review_events_no_approval_sections() -> None:
    text = render_text(build_report([]))
    assert "Approval requests" not in text
