"""Pick-list payloads of ``/v1/terminology/*``: what the service accepts, with sources."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from protocols import terminology

#: ``/v1/terminology/indications?system=``: a short name, or the URI an item's ``system`` holds (an item's own
#: system could not be passed back, where protocol search takes only the URI; a documentation probe).
INDICATION_SYSTEM_FILTERS = {"icd-10-cm": terminology.ICD10CM, "snomed-ct": terminology.SNOMED,
                             **{system: system for system in terminology.INDICATION_SYSTEMS}}


class AlternateCodingSchema(Schema):
    system = fields.String(metadata={"description": "Code system URI of the alternate code"})
    code = fields.String()
    display = fields.String()


class RouteTermSchema(Schema):
    system = fields.String(metadata={"example": terminology.SNOMED})
    code = fields.String(metadata={"example": "46713006"})
    display = fields.String(metadata={"description": "The display a record's display must match for this code "
                                      "(compared ignoring case, runs of white space and a SNOMED CT semantic "
                                      "tag such as '(qualifier value)'; stored as sent)",
                                      "example": "Nasal route"})
    alternates = fields.List(fields.Nested(AlternateCodingSchema),
                             metadata={"description": "FDA SPL (NCI Thesaurus) route code"})
    sources = fields.List(fields.String(), metadata={"description": "Where code and display were checked"})


class UnitTermSchema(Schema):
    system = fields.String(metadata={"example": terminology.UCUM})
    code = fields.String(metadata={"example": "mg/kg/h"})
    display = fields.String(metadata={"example": "milligram per kilogram body weight per hour"})
    kind = fields.String(metadata={"description": "mass or volume"})
    weight_based = fields.Boolean(metadata={"description": "Per kilogram of body weight"})
    rate = fields.Boolean(metadata={"description": "Amount per unit of time (an infusion rate)"})
    per = fields.String(allow_none=True, metadata={"description": "UCUM time unit of a rate"})


class IndicationTermSchema(Schema):
    system = fields.String(metadata={"example": terminology.ICD10CM})
    code = fields.String(metadata={"example": "F53.0"})
    display = fields.String(metadata={"example": "Postpartum depression"})
    category = fields.String(allow_none=True, metadata={"description": "ICD-10-CM category (3 characters)"})
    billable = fields.Boolean(allow_none=True, metadata={"description": "ICD-10-CM: valid for billing"})
    source = fields.String(metadata={"description": "Where code and display were checked"})
    covers = fields.List(fields.String(), metadata={
        "description": "ICD-10-CM: code prefixes an order's reason may carry and still match a protocol listing "
                       "this (unspecified) code, in CDS Hooks cards: the codes of the same disorder, not the whole "
                       "category (F32.9 covers F32.0-F32.5, not F32.81 or F32.A). Empty: the code matches itself only",
        "example": ["F33.0", "F33.1", "F33.2", "F33.3", "F33.4"]})
    covers_source = fields.String(allow_none=True, metadata={"description": "Where `covers` was checked"})


class RouteListSchema(Schema):
    items = fields.List(fields.Nested(RouteTermSchema))


class UnitListSchema(Schema):
    items = fields.List(fields.Nested(UnitTermSchema))
    rules = fields.String(metadata={"description": "Which other UCUM units are accepted, and why"})


class IndicationListSchema(Schema):
    items = fields.List(fields.Nested(IndicationTermSchema))


class IndicationQuerySchema(Schema):
    system = fields.String(validate=validate.OneOf(list(INDICATION_SYSTEM_FILTERS)),
                           metadata={"description": "Only codes of this system"})
