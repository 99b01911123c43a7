"""marshmallow schemas: the wire contract and its validation, one place per concept."""
