"""One mapping between our broker grants (``shared.broker_access``) and confluent-kafka's admin types."""

from __future__ import annotations

from typing import Any

from shared.broker_access import Grant, Operation, Pattern, Resource


class AclMapping:
    """Grants of ``shared.broker_access`` ↔ confluent-kafka's ACL bindings and SCRAM mechanisms.

    The Kafka launcher grants our services theirs with it; the issuer's broker adapter reads and writes the
    tenants' with it."""

    def __init__(self) -> None:
        from confluent_kafka.admin import (
            AclOperation,
            AclPermissionType,
            ResourcePatternType,
            ResourceType,
            ScramMechanism,
        )

        self.resource = {
            Resource.TOPIC: ResourceType.TOPIC,
            Resource.GROUP: ResourceType.GROUP,
            Resource.TRANSACTIONAL_ID: ResourceType.TRANSACTIONAL_ID,
            Resource.CLUSTER: ResourceType.BROKER,
        }
        self.pattern = {
            Pattern.LITERAL: ResourcePatternType.LITERAL,
            Pattern.PREFIXED: ResourcePatternType.PREFIXED,
        }
        self.operation = {
            Operation.READ: AclOperation.READ,
            Operation.WRITE: AclOperation.WRITE,
            Operation.CREATE: AclOperation.CREATE,
            Operation.DESCRIBE: AclOperation.DESCRIBE,
            Operation.DESCRIBE_CONFIGS: AclOperation.DESCRIBE_CONFIGS,
            Operation.ALTER: AclOperation.ALTER,
            Operation.DELETE: AclOperation.DELETE,
        }
        self.mechanism = {
            "SCRAM-SHA-256": ScramMechanism.SCRAM_SHA_256,
            "SCRAM-SHA-512": ScramMechanism.SCRAM_SHA_512,
        }
        self.back_resource = {v: k for k, v in self.resource.items()}
        self.back_pattern = {v: k for k, v in self.pattern.items()}
        self.back_operation = {v: k for k, v in self.operation.items()}
        self.back_mechanism = {v: k for k, v in self.mechanism.items()}
        self.allow = AclPermissionType.ALLOW

    def binding(self, grant: Grant) -> Any:
        from confluent_kafka.admin import AclBinding

        return AclBinding(
            self.resource[grant.resource],
            grant.name,
            self.pattern[grant.pattern],
            grant.principal,
            "*",
            self.operation[grant.operation],
            self.allow,
        )

    def exact_filter(self, binding: Any) -> Any:
        from confluent_kafka.admin import AclBindingFilter

        return AclBindingFilter(
            binding.restype,
            binding.name,
            binding.resource_pattern_type,
            binding.principal,
            binding.host,
            binding.operation,
            binding.permission_type,
        )

    def grant(self, binding: Any) -> Grant | None:
        """The grant a binding is, or None when it is not one we could have made (DENY, a host, ...)."""
        if binding.permission_type != self.allow or binding.host != "*":
            return None
        try:
            return Grant(
                binding.principal,
                self.back_resource[binding.restype],
                binding.name,
                self.back_pattern[binding.resource_pattern_type],
                self.back_operation[binding.operation],
            )
        except KeyError:
            return None
