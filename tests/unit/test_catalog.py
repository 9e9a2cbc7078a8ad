"""The catalogs: every code has one slug name of its latest label, unknown codes are kept."""

from __future__ import annotations

import pytest

from app import catalog

JOB_TYPES = {
    0: "microsoft_365_scan",
    7: "microsoft_365",
    10: "google_workspace_scan",
    11: "google_workspace",
    12: "iaas_paas",
    15: "salesforce",
    16: "dynamics_365",
}

STATUSES = {
    0: "none",
    1: "running",
    2: "finished",
    3: "failed",
    4: "finished_with_exception",
    5: "skipped",
    6: "pending",
    7: "failed_to_start",
    8: "canceled",
    9: "rejected",
    10: "stopped",
    11: "not_scanned",
    12: "disabled",
    13: "not_started",
    14: "waiting_for_configuration",
}

MODULES = {
    0: "none",
    1: "granular_backup_and_restore",
    2: "exchange_online_backup_and_restore",
    3: "report_center",
    4: "content_management",
    5: "deployment",
    6: "replicator",
    7: "administrator",
    8: "archiver",
    9: "cloud_app_admin",
    10: "retention",
    302: "sharepoint_online",
    303: "exchange_online",
    304: "microsoft_365_groups",
    305: "onedrive",
    306: "project_online",
    307: "exchange_online_public_folder",
    308: "microsoft_teams",
    309: "teams_chat",  # renamed by the change log; the page called it "Archiver"
    310: "power_bi",
    311: "power_automate",
    312: "power_apps",
    355: "cloud_backup_for_azure",
    356: "azure_virtual_machine",
    357: "disk",
    358: "microsoft_entra_id",
    359: "storage",
    360: "admin_portal_settings",
    361: "amazon_ec2",
    362: "native_azure_sql_backup_monitoring",  # the page called it "Azure SQL"
    363: "dev_ops",
    364: "microsoft_entra_id_b2c",
    365: "azure_sql_backup",
    366: "google_virtual_machine_instance",
    # Added by the upstream's change log after the page was written.
    367: "azure_vmware_solution",
    368: "sql_server_in_azure_vm",
    369: "google_cloud_storage",
    370: "cosmos_db",
    371: "azure_postgresql",
    401: "dynamics_365",
    402: "viva_engage",
    501: "gmail",
    502: "calendar",
    503: "contacts",
    504: "drive",
    505: "shared_drives",
    506: "google_classroom",
    507: "chat",
    508: "google_directory",
    550: "dynamics_crm_backup",
    551: "dynamics_unified_operations_backup",
}


@pytest.mark.parametrize(
    ("cat", "expected"),
    [(catalog.JOB_TYPE, JOB_TYPES), (catalog.STATUS, STATUSES), (catalog.MODULE, MODULES)],
    ids=["job_type", "status", "module"],
)
def test_every_code_of_the_page_has_its_slug_name(
    cat: catalog.Catalog, expected: dict[int, str]
) -> None:
    assert {e.code: e.name for e in cat.entries} == expected
    for code, name in expected.items():
        assert cat.name(code) == name
        assert code in cat.codes(name)


@pytest.mark.parametrize("cat", [catalog.JOB_TYPE, catalog.STATUS, catalog.MODULE])
@pytest.mark.parametrize("code", [-1, 99, 372, 9999, None])
def test_unknown_codes_are_named_unknown(cat: catalog.Catalog, code: int | None) -> None:
    assert cat.name(code) == "unknown"
    assert cat.label(code) is None
    assert cat.is_name("unknown")


def test_labels_are_the_pages_labels() -> None:
    assert catalog.JOB_TYPE.label(12) == "IaaS + PaaS"
    assert catalog.STATUS.label(4) == "Finished with exception"
    assert catalog.MODULE.label(364) == "Microsoft Entra ID B2C"


def test_renamed_modules_are_named_by_their_latest_labels() -> None:
    assert catalog.MODULE.name(309) == "teams_chat"
    assert catalog.MODULE.label(309) == "Teams Chat"
    assert catalog.MODULE.name(362) == "native_azure_sql_backup_monitoring"
    assert catalog.MODULE.label(362) == "Native Azure SQL Backup Monitoring"
    assert catalog.MODULE.codes("teams_chat") == {309}
    assert catalog.MODULE.codes("native_azure_sql_backup_monitoring") == {362}


def test_archiver_is_module_8_alone() -> None:
    assert catalog.MODULE.codes("archiver") == {8}
    assert catalog.MODULE.name(8) == "archiver"


def test_old_names_naming_one_code_are_aliases() -> None:
    assert catalog.MODULE.codes("azure_sql") == {362}
    assert catalog.MODULE.is_name("azure_sql")
    assert "azure_sql" in catalog.MODULE.names()
    entry = next(e for e in catalog.MODULE.entries if e.code == 362)
    assert entry.aliases == ("azure_sql",)
    # Primary names are no one's alias: every other entry has none.
    assert [e.code for e in catalog.MODULE.entries if e.aliases] == [362]


@pytest.mark.parametrize("cat", [catalog.JOB_TYPE, catalog.STATUS, catalog.MODULE])
def test_no_name_maps_to_two_codes(cat: catalog.Catalog) -> None:
    names = [n for e in cat.entries for n in (e.name, *e.aliases)]
    assert len(names) == len(set(names))
    assert len({e.code for e in cat.entries}) == len(cat.entries)
    for name in cat.names():
        assert cat.is_name(name)
        assert len(cat.codes(name)) == (0 if name == "unknown" else 1), name
    assert cat.names()[-1] == "unknown"
    assert cat.known_codes() == {e.code for e in cat.entries}


def test_a_catalog_refuses_a_name_for_two_codes() -> None:
    with pytest.raises(ValueError, match="archiver"):
        catalog.Catalog(
            "m", [catalog.Entry(8, "archiver", "A"), catalog.Entry(309, "archiver", "A")]
        )
    with pytest.raises(ValueError, match="old"):
        catalog.Catalog(
            "m", [catalog.Entry(1, "a", "A", ("old",)), catalog.Entry(2, "b", "B", ("old",))]
        )


@pytest.mark.parametrize(
    ("label", "slug"),
    [
        ("IaaS + PaaS", "iaas_paas"),
        ("Finished with exception", "finished_with_exception"),
        ("  Dev Ops ", "dev_ops"),
        ("Microsoft Entra ID B2C", "microsoft_entra_id_b2c"),
    ],
)
def test_slugify(label: str, slug: str) -> None:
    assert catalog.slugify(label) == slug
