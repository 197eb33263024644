"""The operator API's OpenAPI 3.1 document, written by hand beside ``backend/operator/api.py``."""

from __future__ import annotations

from typing import Any

from backend.operator.config import FleetConfig
from backend.operator.shell import MAX_TERMINAL

ERROR = {"$ref": "#/components/responses/Error"}
DEVICE_ID = {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,128}$"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _schemas() -> dict[str, Any]:
    number, string = {"type": "number"}, {"type": "string"}
    summary_fields = {
        "id": DEVICE_ID, "online": {"type": "boolean"}, "health": {"enum": ["red", "green"]},
        "firmware": string, "open_alerts": {"type": "integer"},
        "shard": {"type": "string", "description": "the shard holding (or last holding) it"},
        "since": {**number, "description": "Unix time of the last connect or disconnect"},
        "updated": {**number, "description": "Unix time of the last change of this entry"},
        "location": {
            "type": ["object", "null"], "description": "the house, from the geo-* inventory",
            "properties": {"lat": number, "lon": number, "address": string},
        },
    }  # fmt: skip
    alert_fields = {
        "id": string, "code": string, "severity": {"enum": ["info", "warning", "critical"]},
        "description": string, "fix": {**string, "description": "suggested fix"}, "ts": number,
    }  # fmt: skip
    result_fields = {
        "device": DEVICE_ID, "exit_code": {"type": "integer"}, "output": string,
        "truncated": {"type": "boolean"}, "output_bytes": {"type": "integer"}, "duration": number,
    }  # fmt: skip
    return {
        "DeviceSummary": {"type": "object", "properties": summary_fields},
        "Alert": {"type": "object", "properties": alert_fields},
        "Device": {
            "allOf": [_ref("DeviceSummary")],
            "properties": {
                "alerts": {"type": "array", "items": _ref("Alert")},
                "status": {
                    "type": ["object", "null"],
                    "properties": {"values": {"type": "object"}, "ts": number},
                },
                "inventory": {"type": "object", "description": "the last reported attributes"},
                "history": {
                    "type": "array",
                    "description": "the last presence changes, oldest first",
                    "items": {
                        "type": "object",
                        "properties": {
                            "ts": number,
                            "online": {"type": "boolean"},
                            "shard": string,
                        },
                    },
                },
            },
        },
        "DevicePage": {
            "type": "object",
            "properties": {
                "devices": {"type": "array", "items": _ref("DeviceSummary")},
                "next_cursor": {
                    "type": ["string", "null"],
                    "description": "pass as cursor for the next page; null on the last page",
                },
            },
        },
        "CommandResult": {"type": "object", "properties": result_fields},
        **_rollout_schemas(),
        "Error": {
            "type": "object",
            "required": ["error", "message"],
            "properties": {
                "error": {**string, "description": "a short reason token"},
                "message": string,
                "field": {**string, "description": "the input field at fault, for 400"},
            },
        },
    }


def _rollout_schemas() -> dict[str, Any]:
    integer, number, string = {"type": "integer"}, {"type": "number"}, {"type": "string"}
    states = ["pending", "offered", "downloading", "installing", "success", "failure"]
    selector = {
        "type": "object",
        "description": "an id list on its own, or filters on the fleet state (all must hold)",
        "properties": {
            "devices": {"type": "array", "items": DEVICE_ID, "minItems": 1},
            "state": {"enum": ["red", "green"]}, "firmware": string,
            "prefix": {**string, "description": "device ids starting with this"},
            "online": {"type": "boolean"},
        },
    }  # fmt: skip
    summary = {
        "id": string, "state": {"enum": ["running", "paused", "aborted", "finished"]},
        "version": string, "operator": string, "created": number, "selector": selector,
        "max_concurrent": integer, "rate": number, "total": integer,
        "counts": {"type": "object", "properties": dict.fromkeys(states, integer)},
    }  # fmt: skip
    failed = {"type": "object", "properties": {"device": DEVICE_ID, "reason": string}}
    return {
        "RolloutSelector": selector,
        "RolloutSummary": {"type": "object", "properties": summary},
        "Rollout": {
            "allOf": [_ref("RolloutSummary")],
            "properties": {"artifact_url": string, "checksum": string, "size": integer,
                           "failed": {"type": "array", "items": failed}},
        },
        "RolloutRequest": {
            "type": "object",
            "required": ["version", "artifact_url", "checksum", "selector"],
            "properties": {
                "version": string, "artifact_url": {**string, "format": "uri"},
                "checksum": {**string, "pattern": "^[0-9a-fA-F]{64}$"},
                "size": {**integer, "minimum": 0, "default": 0},
                "selector": _ref("RolloutSelector"),
                "percent": {**number, "exclusiveMinimum": 0, "maximum": 100,
                            "description": "share of the selection, in id order"},
                "count": {**integer, "minimum": 1, "description": "not with percent"},
                "max_concurrent": {**integer, "minimum": 1, "default": 10},
                "rate": {**number, "exclusiveMinimum": 0, "default": 1000,
                         "description": "offers started per second, at most"},
            },
        },
    }  # fmt: skip


def _rollout_paths() -> dict[str, Any]:
    rid = {"name": "rid", "in": "path", "required": True, "schema": DEVICE_ID}
    action = {"name": "action", "in": "path", "required": True,
              "schema": {"enum": ["pause", "resume", "abort"]}}  # fmt: skip
    body = {"required": True,
            "content": {"application/json": {"schema": _ref("RolloutRequest")}}}  # fmt: skip
    summaries = {"type": "array", "items": _ref("RolloutSummary")}
    listing = {"type": "object", "properties": {"rollouts": summaries}}
    return {
        "/rollouts": {
            "get": {"summary": "Every rollout, oldest first",
                    "responses": {"200": _json(listing, "the rollouts"), "401": ERROR}},
            "post": {"summary": "Start offering a firmware to the selected devices",
                     "requestBody": body,
                     "responses": {"201": _json(_ref("RolloutSummary"), "created"),
                                   "400": ERROR, "401": ERROR}},
        },
        "/rollouts/{rid}": {"get": {
            "summary": "A rollout's progress and its failed devices with the reasons",
            "parameters": [rid],
            "responses": {"200": _json(_ref("Rollout"), "the rollout"), "400": ERROR,
                          "401": ERROR, "404": ERROR},
        }},
        "/rollouts/{rid}/{action}": {"post": {
            "summary": "Pause, resume or abort (offers already made run to their end)",
            "parameters": [rid, action],
            "responses": {"200": _json(_ref("Rollout"), "the rollout after the action"),
                          "400": ERROR, "401": ERROR, "404": ERROR, "409": ERROR},
        }},
    }  # fmt: skip


def _device_paths(config: FleetConfig) -> dict[str, Any]:
    id_param = {"name": "id", "in": "path", "required": True, "schema": DEVICE_ID}
    query = [
        {"name": "state", "in": "query", "schema": {"enum": ["red", "green"]}},
        {"name": "online", "in": "query", "schema": {"enum": ["true", "false"]}},
        {"name": "limit", "in": "query", "schema": {
            "type": "integer", "minimum": 1, "maximum": config.max_page_limit,
            "default": config.page_limit}},
        {"name": "cursor", "in": "query", "schema": DEVICE_ID},
    ]  # fmt: skip
    size = [
        {"name": name, "in": "query", "schema": {
            "type": "integer", "minimum": 1, "maximum": MAX_TERMINAL, "default": default}}
        for name, default in (("cols", 80), ("rows", 24))
    ]  # fmt: skip
    forward = [
        {"name": "host", "in": "query", "required": True, "schema": {"type": "string"}},
        {"name": "port", "in": "query", "required": True, "schema": {
            "type": "integer", "minimum": 1, "maximum": 65535}},
        {"name": "protocol", "in": "query", "schema": {"enum": ["tcp", "udp"], "default": "tcp"}},
    ]  # fmt: skip
    path = {"name": "path", "in": "query", "required": True, "schema": {"type": "string"}}
    command = {
        "type": "object",
        "required": ["command"],
        "properties": {
            "command": {"type": "string", "minLength": 1},
            "timeout": {"type": "number", "exclusiveMinimum": 0,
                        "maximum": config.max_command_timeout, "default": config.command_timeout},
        },
    }  # fmt: skip
    return {
        "/devices": {"get": {
            "summary": "Devices in id order, filtered; a page may hold fewer than limit",
            "parameters": query,
            "responses": {"200": _json(_ref("DevicePage"), "a page"), "400": ERROR, "401": ERROR},
        }},
        "/devices/{id}": {"get": {
            "summary": "One device with its open alerts and last status",
            "parameters": [id_param],
            "responses": {"200": _json(_ref("Device"), "the device"), "400": ERROR,
                          "401": ERROR, "404": ERROR},
        }},
        "/devices/{id}/shell": {"get": {
            "summary": "WebSocket: an interactive shell on the device (see docs/operator.md)",
            "description": "Binary frames carry terminal bytes both ways; text frames from "
                           'the operator: {"resize": [cols, rows]} or {"stop": true}. Closes '
                           "1000 when either side stops (\"shell exited\" for the device's "
                           "normal exit), 4100 when the device disconnects, 4101 after the "
                           "idle timeout, 4102 when the device ends the session otherwise, "
                           "4103 on a device error. 409 unsupported: the device serves no "
                           "shell; 502 device_error: the device answered with an error.",
            "parameters": [id_param, *size],
            "responses": {"101": {"description": "the shell is open"}, "400": ERROR,
                          "401": ERROR, "404": ERROR, "409": ERROR, "502": ERROR,
                          "504": ERROR},
        }},
        "/devices/{id}/port-forward": {"get": {
            "summary": "WebSocket: connections to host:port as the device sees it "
                       "(see docs/operator.md)",
            "description": 'Text frames {"op": "open"|"close"|"ack", "id": C} from the operator, '
                           '{"op": "opened"|"ack"|"closed", "id": C, ...} back; binary frames '
                           "[len(C)] C <bytes> both ways. Closes 1000 when the operator ends it, "
                           "4100 when the device disconnects, 4101 after the idle timeout.",
            "parameters": [id_param, *forward],
            "responses": {"101": {"description": "the forward is open"}, "400": ERROR,
                          "401": ERROR, "404": ERROR, "409": ERROR},
        }},
        "/devices/{id}/files/stat": {"get": {
            "summary": "Mender file transfer: the device's file_info of path",
            "parameters": [id_param, path],
            "responses": {"200": {"description": "path, size, mode, uid, gid, modtime"},
                          "400": ERROR, "401": ERROR, "404": ERROR, "409": ERROR,
                          "502": ERROR, "504": ERROR},
        }},
        "/devices/{id}/files/download": {"get": {
            "summary": "WebSocket: the file in binary frames, then "
                       '{"op": "done", "size", "sha256"} or {"op": "error", "message"}',
            "parameters": [id_param, path],
            "responses": {"101": {"description": "the transfer runs"}, "400": ERROR,
                          "401": ERROR, "404": ERROR, "409": ERROR},
        }},
        "/devices/{id}/files/upload": {"get": {
            "summary": 'WebSocket: after {"op": "ready"} binary frames, then {"op": "end"}; '
                       'answered {"op": "done", "size", "sha256"} or {"op": "error", "message"}',
            "parameters": [id_param, path,
                           {"name": "size", "in": "query", "required": True,
                            "schema": {"type": "integer", "minimum": 0,
                                       "maximum": config.max_transfer_bytes}},
                           {"name": "mode", "in": "query",
                            "schema": {"type": "integer", "default": 420}}],
            "responses": {"101": {"description": "the transfer runs"}, "400": ERROR,
                          "401": ERROR, "404": ERROR, "409": ERROR, "413": ERROR},
        }},
        "/devices/{id}/commands": {"post": {
            "summary": "Run a command on a connected device and wait for its result",
            "parameters": [id_param],
            "requestBody": {"required": True, "content": {"application/json": {"schema": command}}},
            "responses": {
                "200": _json(_ref("CommandResult"), "the device's answer (output may be cut)"),
                "400": ERROR, "401": ERROR, "404": ERROR, "409": ERROR, "502": ERROR,
                "504": ERROR,
            },
        }},
        "/fleet/live": {"get": {
            "summary": "WebSocket: the fleet map's live feed (see docs/operator.md)",
            "description": 'Text frames: {"type": "fleet", "fields": [...], "rows": [...]} '
                           'once, then {"type": "delta", "rows": [...], "removed": [...]}; a '
                           "row is [id, lat, lon, flags (1 online, 2 red), firmware, address, "
                           "open alerts]. Closes 4002 when the client falls behind.",
            "responses": {"101": {"description": "the feed is open"}, "400": ERROR,
                          "401": ERROR},
        }},
    }  # fmt: skip


def openapi_document(config: FleetConfig) -> dict[str, Any]:
    text = {"text/plain": {"schema": {"type": "string"}}}
    public: dict[str, Any] = {"security": []}
    return {
        "openapi": "3.1.0",
        "info": {"title": "fleetharness operator API", "version": "1"},
        "security": [{"bearer": []}],
        "paths": {
            **_device_paths(config),
            **_rollout_paths(),
            "/healthz": {"get": {**public, "summary": "200 while connected to NATS",
                                 "responses": {"200": {"description": "ok", "content": text},
                                               "503": {"description": "not ready"}}}},
            "/metrics": {"get": {**public, "summary": "Prometheus metrics",
                                 "responses": {"200": {"description": "metrics",
                                                       "content": text}}}},
            "/openapi.json": {"get": {**public, "summary": "This document",
                                      "responses": {"200": {"description": "OpenAPI 3.1"}}}},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": _schemas(),
            "responses": {"Error": _json(_ref("Error"), "the request was refused")},
        },
    }  # fmt: skip
