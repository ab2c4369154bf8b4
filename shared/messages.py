"""The messages the functions hand to each other. Each carries a `schema_version`.

A message that fails validation is never dropped: the trigger raises, the host retries and then
moves it to the poison (storage queue) or dead-letter (Service Bus) queue with the reason.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from shared import naming

ParamValue = Union[bool, int, float, str]
DatasetName = Annotated[str, AfterValidator(naming.check_dataset)]
DatasetVersion = Annotated[str, AfterValidator(naming.check_version)]
FlowId = Annotated[str, Field(pattern=r"^[0-9a-f-]{36}$")]


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

    flow_id: FlowId
    dataset: DatasetName
    version: DatasetVersion
    params: dict[str, ParamValue] = Field(default_factory=dict)
    attempt: int = Field(default=1, ge=1, le=100)  # 2 and up: a retry of a fine-tune that failed (its own job)
    gate: Literal["on", "off"] = "on"  # off: this flow deploys whatever its fine-tune scores (recorded)

    @field_validator("params")
    @classmethod
    def _params(cls, v: dict) -> dict:
        for key in v:
            if not key.replace("_", "").isalnum():
                raise ValueError(f"parameter name {key!r} must be letters, digits and '_'")
        return v


class DeployRequest(_Message):
    """`deployments` Service Bus queue: deploy one registered model version."""

    flow_id: FlowId
    dataset: DatasetName
    version: DatasetVersion
    job: str = Field(pattern=r"^[A-Za-z0-9_-]{1,255}$")
    model_name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")
    model_version: str = Field(pattern=r"^[0-9]{1,12}$")

    @property
    def message_id(self) -> str:
        """Service Bus duplicate detection id: one deploy per model version."""
        return f"{self.model_name}:{self.model_version}"
