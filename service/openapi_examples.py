"""Examples for the OpenAPI description, in Russian as the agreement's working language requires (Art. 8)."""

from __future__ import annotations

from typing import Any

REQUEST_EXAMPLE: dict[str, Any] = {
    "kind": "request",
    "recipient_party": "BY",
    "urgent": False,
    "grounds": "Уголовное дело № 2026-0451, статья 190 УК Республики Казахстан (мошенничество).",
    "purpose": "Установление владельца банковского счёта.",
    "content": "Просим предоставить сведения о владельце счёта и выписку операций за 2026 год.",
    "expected_execution_date": "2026-12-31",
    "other_information": "Нет.",
    "direction": "economic_crime",
    "form": "crime_information",
    "confidentiality": "confidential",
    "purpose_code": "criminal_investigation",
    "case_number": "2026-0451",
}
REPLY_EXAMPLES: dict[str, Any] = {
    "acceptance": {
        "kind": "acceptance",
        "in_reply_to": "<id запроса>",
        "confidentiality": "confidential",
        "note": "Запрос принят к исполнению.",
    },
    "refusal": {
        "kind": "refusal",
        "in_reply_to": "<id запроса>",
        "confidentiality": "confidential",
        "scope": "partial",
        "ground": "national_law",
        "reason": "Сведения о третьих лицах не подлежат передаче по национальному законодательству.",
    },
    "execution_result": {
        "kind": "execution_result",
        "in_reply_to": "<id запроса>",
        "confidentiality": "confidential",
        "summary": "Запрос исполнен, материалы прилагаются.",
        "handling": {
            "no_court_use_without_consent": True,
            "no_onward_transfer_without_consent": True,
            "conditions": [],
        },
    },
}


def document_body(description: str) -> dict[str, Any]:
    """``openapi_extra`` for an endpoint that takes a document as JSON or as multipart with attachments."""
    examples = {"request": {"summary": "Запрос (ст. 4)", "value": REQUEST_EXAMPLE}}
    examples.update({k: {"summary": k, "value": v} for k, v in REPLY_EXAMPLES.items()})
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {
                "application/json": {"schema": {"type": "object"}, "examples": examples},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "document": {"type": "string", "description": "the document's fields as JSON"},
                            "attachments": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        },
                    }
                },
            },
        }
    }
