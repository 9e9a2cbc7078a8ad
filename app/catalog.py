"""The enum catalogs of the AvePoint jobs page: code -> name and label.

Names are lower-case slugs of the upstream's latest labels (`Finished with exception` ->
`finished_with_exception`, `IaaS + PaaS` -> `iaas_paas`), one name per code and one code per
name. A name the page used before a rename stays accepted by filters as an alias of that one
code. A code the catalog does not know maps to the name `unknown` and keeps its code: the
upstream's lists grow without notice, and an unknown code must never break a response.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Entry:
    code: int
    name: str
    label: str
    aliases: tuple[str, ...] = ()


def slugify(label: str) -> str:
    """`IaaS + PaaS` -> `iaas_paas`; `Microsoft 365 Scan` -> `microsoft_365_scan`."""
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")


class Catalog:
    """One enum table, looked up by code (rows) or by name (filters)."""

    def __init__(self, kind: str, entries: Iterable[Entry]) -> None:
        self.kind = kind
        self.entries: tuple[Entry, ...] = tuple(entries)
        self._by_code = {e.code: e for e in self.entries}
        by_name: dict[str, set[int]] = {}
        for e in self.entries:
            for n in (e.name, *e.aliases):
                by_name.setdefault(n, set()).add(e.code)
        if len(self._by_code) != len(self.entries):
            raise ValueError(f"{kind}: a code is listed twice")
        ambiguous = sorted(n for n, c in by_name.items() if len(c) > 1 or n == UNKNOWN)
        if ambiguous:
            raise ValueError(f"{kind}: names that do not name exactly one code: {ambiguous}")
        self._codes_by_name = {n: frozenset(c) for n, c in by_name.items()}
        # Code -> name, for the loops that name every row (`.get(code, UNKNOWN)`).
        self.names_by_code: dict[int | None, str] = {e.code: e.name for e in self.entries}

    def name(self, code: int | None) -> str:
        entry = self._by_code.get(code) if code is not None else None
        return entry.name if entry else UNKNOWN

    def label(self, code: int | None) -> str | None:
        entry = self._by_code.get(code) if code is not None else None
        return entry.label if entry else None

    def names(self) -> list[str]:
        """Every name a filter accepts, `unknown` included, in catalog order."""
        seen: dict[str, None] = {}
        for e in self.entries:
            seen[e.name] = None
        for e in self.entries:
            for a in e.aliases:
                seen[a] = None
        seen[UNKNOWN] = None
        return list(seen)

    def is_name(self, name: str) -> bool:
        return name == UNKNOWN or name in self._codes_by_name

    def codes(self, name: str) -> frozenset[int]:
        """The codes a filter name stands for (empty for `unknown`)."""
        return self._codes_by_name.get(name, frozenset())

    def known_codes(self) -> frozenset[int]:
        return frozenset(self._by_code)


def _catalog(
    kind: str, rows: Iterable[tuple[int, str]], aliases: dict[int, tuple[str, ...]] | None = None
) -> Catalog:
    aliases = aliases or {}
    return Catalog(
        kind, (Entry(code, slugify(label), label, aliases.get(code, ())) for code, label in rows)
    )


JOB_TYPE = _catalog(
    "job_type",
    [
        (0, "Microsoft 365 Scan"),
        (7, "Microsoft 365"),
        (10, "Google Workspace Scan"),
        (11, "Google Workspace"),
        (12, "IaaS + PaaS"),
        (15, "Salesforce"),
        (16, "Dynamics 365"),
    ],
)

# The page's module table, then the codes the upstream's change log added later (367..371).
# The change log also renamed two modules, and names follow the latest labels:
# - 309: the page's "Archiver" is now "Teams Chat" (`teams_chat`). `archiver` stays module 8
#   alone: as the page's name of 309 it also named 8, so it is no alias of 309.
# - 362: the page's "Azure SQL" is now "Native Azure SQL Backup Monitoring"
#   (`native_azure_sql_backup_monitoring`); `azure_sql` names 362 alone and stays its alias.
# Stored rows carry the name too: migration 0003 renamed the ones stored under the old names.
MODULE = _catalog(
    "module",
    [
        (0, "None"),
        (1, "Granular Backup and Restore"),
        (2, "Exchange Online Backup and Restore"),
        (3, "Report Center"),
        (4, "Content Management"),
        (5, "Deployment"),
        (6, "Replicator"),
        (7, "Administrator"),
        (8, "Archiver"),
        (9, "Cloud App Admin"),
        (10, "Retention"),
        (302, "SharePoint Online"),
        (303, "Exchange Online"),
        (304, "Microsoft 365 Groups"),
        (305, "OneDrive"),
        (306, "Project Online"),
        (307, "Exchange Online Public Folder"),
        (308, "Microsoft Teams"),
        (309, "Teams Chat"),
        (310, "Power BI"),
        (311, "Power Automate"),
        (312, "Power Apps"),
        (355, "Cloud Backup for Azure"),
        (356, "Azure Virtual Machine"),
        (357, "Disk"),
        (358, "Microsoft Entra ID"),
        (359, "Storage"),
        (360, "Admin Portal Settings"),
        (361, "Amazon EC2"),
        (362, "Native Azure SQL Backup Monitoring"),
        (363, "Dev Ops"),
        (364, "Microsoft Entra ID B2C"),
        (365, "Azure SQL Backup"),
        (366, "Google Virtual Machine Instance"),
        (367, "Azure VMware Solution"),
        (368, "SQL Server in Azure VM"),
        (369, "Google Cloud Storage"),
        (370, "Cosmos DB"),
        (371, "Azure PostgreSQL"),
        (401, "Dynamics 365"),
        (402, "Viva Engage"),
        (501, "Gmail"),
        (502, "Calendar"),
        (503, "Contacts"),
        (504, "Drive"),
        (505, "Shared Drives"),
        (506, "Google Classroom"),
        (507, "Chat"),
        (508, "Google Directory"),
        (550, "Dynamics CRM Backup"),
        (551, "Dynamics Unified Operations Backup"),
    ],
    aliases={362: ("azure_sql",)},
)

STATUS = _catalog(
    "status",
    [
        (0, "None"),
        (1, "Running"),
        (2, "Finished"),
        (3, "Failed"),
        (4, "Finished with exception"),
        (5, "Skipped"),
        (6, "Pending"),
        (7, "Failed to start"),
        (8, "Canceled"),
        (9, "Rejected"),
        (10, "Stopped"),
        (11, "Not scanned"),
        (12, "Disabled"),
        (13, "Not started"),
        (14, "Waiting for configuration"),
    ],
)

CATALOGS: dict[str, Catalog] = {c.kind: c for c in (STATUS, JOB_TYPE, MODULE)}
