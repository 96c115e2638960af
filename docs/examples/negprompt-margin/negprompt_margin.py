"""A scorer plugin: the margin between the best and second-best class similarity (higher = more ID)."""

from negprompt.plugin import hookimpl


def margin_score(pos, neg=None, *, temperature=1.0, logit_scale=100.0):
    top2 = pos.topk(2, dim=1).values
    return top2[:, 0] - top2[:, 1]


@hookimpl
def register_scorers(register):
    register("margin", margin_score, description="best minus second-best class cosine")
