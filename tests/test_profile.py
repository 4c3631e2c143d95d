"""kdedu.profile: KDEDU_PROFILE picks fast/powered/full; without it, full only when CUDA is available."""

from __future__ import annotations

import pytest
import torch

from kdedu import profile


@pytest.mark.parametrize("value,expected", [("fast", "fast"), ("full", "full"), (" FULL ", "full"),
                                            ("Fast\n", "fast")])
def test_env_overrides(monkeypatch, value, expected):
    monkeypatch.setenv("KDEDU_PROFILE", value)
    assert profile.current() == expected
    assert profile.pick(fast=1, full=2) == (1 if expected == "fast" else 2)


@pytest.mark.parametrize("cuda", [True, False])
def test_default_follows_cuda(monkeypatch, cuda):
    monkeypatch.delenv("KDEDU_PROFILE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert profile.current() == ("full" if cuda else "fast")
    assert profile.pick(fast="small", full="big") == ("big" if cuda else "small")


def test_empty_env_means_unset(monkeypatch):
    monkeypatch.setenv("KDEDU_PROFILE", "")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert profile.current() == "fast"


def test_env_wins_over_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("KDEDU_PROFILE", "fast")
    assert profile.pick(fast=30, full=200) == 30


@pytest.mark.parametrize("value", ["slow", "gpu", "fast,full"])
def test_invalid_profile_raises(monkeypatch, value):
    monkeypatch.setenv("KDEDU_PROFILE", value)
    with pytest.raises(ValueError, match="KDEDU_PROFILE"):
        profile.current()
    with pytest.raises(ValueError, match=value):
        profile.pick(fast=1, full=2)


def test_pick_returns_objects_unchanged(monkeypatch):
    monkeypatch.setenv("KDEDU_PROFILE", "full")
    big = {"epochs": 200}
    assert profile.pick(fast=None, full=big) is big
    assert profile.PROFILES == ("fast", "powered", "full")


def test_powered_profile_falls_back_to_fast(monkeypatch):
    monkeypatch.setenv("KDEDU_PROFILE", "powered")
    assert profile.current() == "powered"
    assert profile.pick(fast=1, full=2, powered=3) == 3
    assert profile.pick(fast=1, full=2) == 1            # a chapter with nothing bigger to store
    monkeypatch.setenv("KDEDU_PROFILE", "fast")
    assert profile.pick(fast=1, full=2, powered=3) == 1
