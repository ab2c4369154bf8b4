"""The messages the functions hand to each other. Each carries a `schema_version`.

A message that fails validation is never dropped: the trigger raises, the host retries and then
moves it to the poison (storage queue) or dead-letter (Service Bus) queue with the reason.
"""

from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared import naming

ParamValue = Union[bool, int, float, str]


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    schema_version: Literal[1] = 1

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def parse(cls, body: str | bytes):
        return cls.model_validate_json(body)


class FinetuneRequest(_Message):
    """`finetune-requests` queue: fine-tune one prepared dataset version."""

    flow_id: str = Field(pattern=r"^[0-9a-f-]{36}$")
    dataset: str
    version: str
    params: dict[str, ParamValue] = Field(default_factory=dict)

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str) -> str:
        return naming.check_dataset(v)

    @field_validator("version")
    @classmethod
    def _version(cls, v: str) -> str:
        return naming.check_version(v)

    @field_validator("params")
    @classmethod
    def _params(cls, v: dict) -> dict:
        for key in v:
            if not key.replace("_", "").isalnum():
                raise ValueError(f"parameter name {key!r} must be letters, digits and '_'")
        return v


class DeployRequest(_Message):
    """`deployments` Service Bus queue: deploy one registered model version."""

    flow_id: str = Field(pattern=r"^[0-9a-f-]{36}$")
    dataset: str
    version: str
    job: str = Field(pattern=r"^[A-Za-z0-9_-]{1,255}$")
    model_name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")
    model_version: str = Field(pattern=r"^[0-9]{1,12}$")

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str) -> str:
        return naming.check_dataset(v)

    @field_validator("version")
    @classmethod
    def _version(cls, v: str) -> str:
        return naming.check_version(v)

    @property
    def message_id(self) -> str:
        """Service Bus duplicate detection id: one deploy per model version."""
        return f"{self.model_name}:{self.model_version}"
