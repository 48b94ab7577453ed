"""All studies by name, in the order ``lia study all`` runs them."""

from __future__ import annotations

from studies import cost, cxl, e2e, microbench, policy_map, precision, sensitivity, validation
from studies.framework import Study

STUDIES: dict[str, Study] = {
    s.name: s
    for s in (
        microbench.STUDY,
        e2e.STUDY,
        policy_map.STUDY,
        cxl.STUDY,
        sensitivity.STUDY,
        cost.STUDY,
        precision.STUDY,
        validation.STUDY,
    )
}
