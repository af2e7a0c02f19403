"""The kopf settings the operator runs with: each one avoids a known pitfall."""

from __future__ import annotations

import kopf

from sluice.operator import options


def test_configure_makes_kopf_standalone_and_keeps_its_state_in_our_annotations() -> None:
    settings = kopf.OperatorSettings()
    options.configure(settings)
    assert settings.peering.standalone is True
    assert settings.scanning.disabled is True
    assert isinstance(settings.persistence.progress_storage, kopf.AnnotationsProgressStorage)
    assert settings.persistence.progress_storage.prefix == "sluice.dev"
    assert isinstance(settings.persistence.diffbase_storage, kopf.AnnotationsDiffBaseStorage)
    assert settings.persistence.diffbase_storage.prefix == "sluice.dev"
    assert settings.posting.loggers is False  # log lines never become Events


def test_configure_bounds_every_watch_on_both_sides() -> None:
    settings = kopf.OperatorSettings()
    options.configure(settings)
    server, client = settings.watching.server_timeout, settings.watching.client_timeout
    assert server is not None
    assert client is not None
    assert 0 < server < client


def test_default_proxy_image_is_this_versions_image() -> None:
    assert options.Options().proxy_image.startswith(options.DEFAULT_IMAGE + ":")
    assert options.Options(health_port=1).liveness_endpoint == "http://0.0.0.0:1/healthz"


def test_configure_has_the_api_server_filter_the_children_watches_by_our_label() -> None:
    settings = kopf.OperatorSettings()
    options.configure(settings)
    selectors = dict(settings.watching.label_selectors.items())
    assert len(selectors) == len(options.CHILDREN)
    assert set(selectors.values()) == {"app.kubernetes.io/managed-by=sluice-operator"}
