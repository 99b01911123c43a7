"""``/v1/terminology``: the routes, units and indication codes the service accepts.

Clients build pick lists from these instead of hard-coding codes: whatever is listed here passes
validation on ``POST``/``PUT /v1/protocols`` and anything else is refused with a 422.
"""

from __future__ import annotations

from typing import Any

from api.parsing import Blueprint
from protocols import terminology, units
from schemas.terminology import (
    INDICATION_SYSTEM_FILTERS,
    IndicationListSchema,
    IndicationQuerySchema,
    RouteListSchema,
    UnitListSchema,
)

blp = Blueprint("terminology", __name__, url_prefix="/v1/terminology",
                description="Code systems and codes accepted in protocol records (pick lists).")

#: ``private``: these answers need a key (unless anonymous reads are on), and ``public`` would let a
#: shared cache hand them to callers without one (RFC 9111, 3.5).
CACHE_HEADERS = {"Cache-Control": "private, max-age=3600"}

UNIT_RULES = (
    "Any valid UCUM unit of the form amount[/kg][/time] is accepted: amount is a mass (g, mg, ug or ng), "
    "/kg means per kilogram of body weight, /time (h, min, d, wk) makes it a rate; a plain volume (mL or L) is "
    "accepted as an amount. Other units (concentrations such as mg/mL, mg/m2, %, annotations such as "
    "mg{tbl}, other masses such as Mg or kg) are refused because the dose checker could not compare or "
    "convert them, or they are one slip from another dose."
)


@blp.route("/routes", methods=["GET"])
@blp.response(200, RouteListSchema, headers={"Cache-Control": {"schema": {"type": "string"}}})
def list_routes() -> tuple[dict[str, Any], int, dict[str, str]]:
    """SNOMED CT route codes, each with its FDA SPL route code as an alternate."""
    items = [
        {"system": terminology.SNOMED, "code": c.code, "display": c.display,
         "alternates": [{"system": terminology.NCI_THESAURUS, "code": c.spl_code, "display": c.spl_display}]
         if c.spl_code else [],
         "sources": list(c.sources)}
        for c in terminology.ROUTES.values()
    ]
    return {"items": items}, 200, CACHE_HEADERS


@blp.route("/units", methods=["GET"])
@blp.response(200, UnitListSchema, headers={"Cache-Control": {"schema": {"type": "string"}}})
def list_units() -> tuple[dict[str, Any], int, dict[str, str]]:
    """UCUM dose units (the pick list); `rules` says which other UCUM units are accepted."""
    items = [{"system": terminology.UCUM, "code": code, "display": display, **units.describe(code)}
             for code, display in units.DOSE_UNITS.items()]
    return {"items": items, "rules": UNIT_RULES}, 200, CACHE_HEADERS


@blp.route("/indications", methods=["GET"])
@blp.arguments(IndicationQuerySchema(), location="query")
@blp.response(200, IndicationListSchema, headers={"Cache-Control": {"schema": {"type": "string"}}})
def list_indications(query: dict[str, Any]) -> tuple[dict[str, Any], int, dict[str, str]]:
    """ICD-10-CM codes (with their categories) and SNOMED CT alternates accepted as indications."""
    wanted = INDICATION_SYSTEM_FILTERS.get(query.get("system", ""))
    items = [
        {"system": c.system, "code": c.code, "display": c.display, "category": c.category,
         "billable": c.billable, "source": c.source, "covers": list(c.covers), "covers_source": c.covers_source}
        for c in terminology.indication_list()
        if wanted is None or c.system == wanted
    ]
    return {"items": items}, 200, CACHE_HEADERS
