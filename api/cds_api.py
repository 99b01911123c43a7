"""CDS Hooks 2.0 (https://cds-hooks.hl7.org/2.0/): a ``protocol-dose-check`` service.

Discovery lists one service per hook, because a CDS Hooks service has exactly one ``hook`` and a
unique ``id``: ``protocol-dose-check`` for ``order-sign`` and ``protocol-dose-check-select`` for
``order-select``. Both endpoints run the same check and accept either hook (an order-select
request is limited to its ``selections``). The check itself is the domain's: reading draft orders
and the prefetched weight (:mod:`protocols.draft_orders`), judging doses and building cards
(:mod:`protocols.cds`). A malformed request is a 400 naming the offending path; ``source`` of each
card links the protocol version it used.
"""

from __future__ import annotations

from typing import Any

from flask import request, url_for

from api.errors import ApiError, ErrorSchema
from api.extensions import get_db
from api.http import UNTAGGED_PRECONDITION, check_untagged_preconditions
from api.parsing import Blueprint
from protocols import cds, draft_orders
from protocols.draft_orders import BODY_WEIGHT_LOINC, LOINC, WEIGHT_PREFETCH
from schemas.dosing import CdsDiscoverySchema, CdsRequestSchema, CdsResponseSchema

blp = Blueprint("cds", __name__, url_prefix="/cds-services",
                description="CDS Hooks 2.0 services: protocol dose checking at order time.")

WEIGHT_QUERY = (f"Observation?patient={{{{context.patientId}}}}&code={LOINC}|{BODY_WEIGHT_LOINC}"
                f"&_sort=-date&_count=1")
SERVICE_HOOKS = {"protocol-dose-check": "order-sign", "protocol-dose-check-select": "order-select"}


def _service(service_id: str) -> dict[str, Any]:
    hook = SERVICE_HOOKS[service_id]
    return {
        "hook": hook,
        "id": service_id,
        "title": "Treatment-protocol dose check",
        "description": (f"On {hook}, checks each draft MedicationRequest's dose against the dosing ranges "
                        "of the treatment-protocol version in effect for its RxNorm medication and SNOMED "
                        "CT route; weight-based ranges use the prefetched body weight (LOINC 29463-7)."),
        "prefetch": {WEIGHT_PREFETCH: WEIGHT_QUERY},
        "usageRequirements": "Draft orders need RxNorm medication codings, a route (SNOMED CT, or an FDA SPL "
                             "route code; an order without one is judged as given by each route its protocols "
                             "give) and a UCUM doseQuantity (or doseRange / rateQuantity).",
    }


@blp.route("", methods=["GET"])
@blp.response(200, CdsDiscoverySchema)
def discovery() -> dict[str, Any]:
    """CDS Hooks discovery: the services this server offers."""
    return {"services": [_service(service_id) for service_id in SERVICE_HOOKS]}


@blp.before_request
def _known_service() -> None:
    """An unknown service is a 404 whatever its body: ``@blp.arguments`` would otherwise validate the
    body first and answer 400 for a request no service can take."""
    service_id = (request.view_args or {}).get("service_id")
    if request.endpoint == "cds.call_service" and service_id not in SERVICE_HOOKS:
        raise ApiError(404, f"no CDS service '{service_id}'; see GET /cds-services")


@blp.route("/<string:service_id>", methods=["POST"])
@blp.arguments(CdsRequestSchema(), error_status_code=400)
@blp.response(200, CdsResponseSchema)
@blp.alt_response(404, schema=ErrorSchema, description="No such CDS service")
@blp.alt_response(412, schema=ErrorSchema, description=UNTAGGED_PRECONDITION)
def call_service(request_body: dict[str, Any], service_id: str) -> dict[str, Any]:
    """Run the dose check for the draft orders of an order-select or order-sign hook."""
    check_untagged_preconditions(exists=False)
    context = request_body["context"]
    patient = draft_orders.HookPatient(context["patientId"], request_body.get("fhirServer"))
    orders = draft_orders.draft_medication_requests(context.get("draftOrders"), request_body["hook"],
                                                    context.get("selections") or [], patient)
    weight = draft_orders.prefetched_weight(request_body.get("prefetch") or {}, patient=patient)
    return {"cards": cds.cards_for_orders(get_db(), orders, weight, _version_url)}


def _version_url(protocol_id: str, version: int) -> str:
    return url_for("protocols.get_version", protocol_id=protocol_id, version=version, _external=True)
