"""The topic taxonomy: what feedback is about, and how a text is matched to it.

Each topic has a description (used by services that compare meanings, such as
``advanced``) and keyword patterns (used by every built-in service). A pattern
is a word or a phrase, matched case-insensitively on whole words; a trailing
``*`` on a word matches any ending (``crash*`` matches crash, crashed,
crashes, crashing). When patterns of several topics overlap, the longest match
wins, so ``customer service`` is ``support`` and not ``product_overall``.

A workflow's ``configuration.topics`` adds keywords to a topic, adds a new
topic, or (``"replace": true``) replaces a topic's keywords; an empty keyword
list with ``replace`` switches a built-in topic off.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import attrs

__all__ = ["DEFAULT_TOPICS", "FALLBACK_TOPIC", "Topic", "TopicMatcher", "build_taxonomy"]

#: The topic of an aspect that expresses sentiment but names nothing specific.
FALLBACK_TOPIC = "product_overall"


@attrs.frozen(kw_only=True)
class Topic:
    """One entry of the taxonomy: ``name``, ``description`` and keyword ``keywords``."""

    name: str
    description: str
    keywords: tuple[str, ...]


def _t(name: str, description: str, keywords: str) -> Topic:
    words = tuple(k.strip() for k in keywords.split(",") if k.strip())
    return Topic(name=name, description=description, keywords=words)


DEFAULT_TOPICS: tuple[Topic, ...] = (
    _t(
        "user_interface",
        "The look, layout, navigation and ease of use of the screens, website or app.",
        "user interface, interface, ui, ux, design, redesign, layout, menu*, navigat*, screen*,"
        " button*, dashboard, look and feel, font*, theme, dark mode, website, web site, site,"
        " portal, form, forms, checkout, usability, easy to use, easier to use, hard to use,"
        " user-friendly, user friendly, intuitive, unintuitive, cluttered, clunky, confusing,"
        " hard to find, difficult to find",
    ),
    _t(
        "performance",
        "Speed: how fast pages, actions, transfers or services respond, and waiting times.",
        "performance, speed*, fast, faster, slow*, sluggish, lag*, laggy, latency, load time*,"
        " loading, takes ages, took ages, takes forever, took forever, taking forever,"
        " times out, timed out, timeout*, instant, instantly,"
        " responsive, unresponsive, frame rate, waited, wait time*, waiting time*, delay*",
    ),
    _t(
        "reliability",
        "Whether the service works: crashes, outages, errors, failures, dropped connections.",
        "reliab*, unreliable, stable, stability, unstable, crash*, outage*, downtime, down,"
        " bug, bugs, buggy, glitch*, error*, fail*, freez*, froze, frozen, disconnect*,"
        " dropped, drops, dropping, signal, power cut*, stopped working, not working,"
        " broken, was cancelled, were cancelled, got cancelled, logs me out, logged me out",
    ),
    _t(
        "pricing",
        "Prices, plans, fees, premiums and value for money.",
        "price*, pricing, priced, pricey, overpriced, cost, costs, costly, expensive, cheap,"
        " cheaper, affordable, value for money, worth it, not worth, fee, fees, premium,"
        " premiums, tariff*, discount*, plan, plans, subscription*, rip-off, rip off,"
        " interest rate*, save money, saved money",
    ),
    _t(
        "billing",
        "Bills, invoices, charges, payments and refunds.",
        "bill, bills, billing, billed, invoice*, charge, charged, charges, overcharg*,"
        " refund*, payment*, direct debit, deposit, receipt*, statement*, meter reading*",
    ),
    _t(
        "support",
        "Customer service and the people who serve customers: agents, staff, call centre.",
        "support, customer service, customer care, service desk, help desk, helpdesk,"
        " call centre, call center, agent*, representative*, advisor*, adviser*, staff,"
        " support team, sales team, technician*, engineer*, receptionist*, front desk,"
        " crew, waiter*, waitress*, nurse*, doctor*, tutor*, teacher*, tour guide, chef,"
        " driver, employee*, ticket*, live chat, on hold, hung up, callback, call back,"
        " phoned, on the phone, help, helped, helpful, unhelpful, rude,"
        " friendly, polite, attentive, dismissive",
    ),
    _t(
        "documentation",
        "Guides, manuals, help articles, API references, terms and written explanations.",
        "documentation, docs, guide*, manual*, help article*, knowledge base, faq*,"
        " tutorial*, api reference, examples, instructions, terms and conditions, terms,"
        " readme",
    ),
    _t(
        "onboarding",
        "Getting started: sign-up, setup, installation, activation, account opening, migration.",
        "onboarding, onboard*, setup, set up, setting up, sign up, signup, sign-up, signing up,"
        " getting started, get started, installation, install*, activation, activate*,"
        " open an account, opening an account, open a new account, create an account,"
        " creating an account, registration, register*, enrol*, enroll*, migrat*",
    ),
    _t(
        "features",
        "What the product can do: functions, options, integrations, tools and requests for more.",
        "feature*, functionality, function*, option*, integration*, tools, mode,"
        " automation*, template*, export*, notification*, reminder*, capabilit*",
    ),
    _t(
        "security",
        "Account access and safety: logins, passwords, two-factor codes, fraud and privacy.",
        "security, secure, safe, safety, password*, login, log in, logging in, locked out,"
        " two-factor, two factor, 2fa, single sign-on, sso, verification, verify, fraud*,"
        " suspicious, privacy, protected, identity",
    ),
    _t(
        "delivery",
        "Getting goods to the customer: shipping, couriers, parcels and their condition.",
        "delivery, deliveries, deliver*, shipping, shipped, shipment*, courier*, parcel*,"
        " package*, packaging, arrived, arrive*, dispatch*",
    ),
    _t(
        FALLBACK_TOPIC,
        "The product or service as a whole, its quality and the overall experience.",
        "product, products, service, overall, quality, experience, platform, software,"
        " company, recommend*",
    ),
)


def build_taxonomy(overrides: Mapping[str, object] | None = None) -> dict[str, Topic]:
    """The default taxonomy with a configuration's ``topics`` applied.

    ``overrides`` maps a topic name to an object with ``keywords``,
    ``description`` and ``replace`` attributes (the workflow's
    ``TopicConfig``).
    """
    topics = {t.name: t for t in DEFAULT_TOPICS}
    for name, spec in (overrides or {}).items():
        keywords = tuple(getattr(spec, "keywords", ()))
        description = getattr(spec, "description", "") or ""
        base = topics.get(name)
        if getattr(spec, "replace", False) and not keywords:
            topics.pop(name, None)
            continue
        if base is None or getattr(spec, "replace", False):
            topics[name] = Topic(
                name=name,
                description=description or (base.description if base else name.replace("_", " ")),
                keywords=keywords,
            )
        else:
            topics[name] = Topic(
                name=name,
                description=description or base.description,
                keywords=base.keywords + keywords,
            )
    return {name: t for name, t in topics.items() if t.keywords or t.description}


_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")

# A keyword word: (text, is_prefix). A keyword: its words.
_Word = tuple[str, bool]


def _words(keyword: str) -> tuple[_Word, ...]:
    out = []
    for word in re.split(r"[\s-]+", keyword.lower().strip()):
        if word.endswith("*"):
            out.append((word[:-1], True))
        elif word:
            out.append((word, False))
    return tuple(out)


def _fits(word: _Word, token: str) -> bool:
    text, prefix = word
    return token.startswith(text) if prefix else token == text


class TopicMatcher:
    """Finds the topics a piece of text mentions, by keyword pattern.

    The text is cut into lower-case word tokens (hyphens separate words, as
    in the patterns). At each token the longest pattern that matches there
    wins and its tokens are consumed, so overlapping shorter patterns of other
    topics do not match.
    """

    def __init__(self, topics: Iterable[Topic]) -> None:
        self._exact: dict[str, list[tuple[tuple[_Word, ...], str]]] = {}
        self._prefix: dict[str, list[tuple[tuple[_Word, ...], str]]] = {}
        for topic in topics:
            for keyword in topic.keywords:
                words = _words(keyword)
                if not words or not words[0][0]:
                    continue
                first, prefix = words[0]
                table = self._prefix if prefix else self._exact
                table.setdefault(first, []).append((words, topic.name))
        for table in (self._exact, self._prefix):
            for entries in table.values():
                entries.sort(key=lambda e: (len(e[0]), sum(len(w) for w, _ in e[0])), reverse=True)
        self._lengths = sorted({len(p) for p in self._prefix}, reverse=True)

    def _candidates(self, token: str) -> list[tuple[tuple[_Word, ...], str]]:
        found = list(self._exact.get(token, ()))
        for length in self._lengths:
            if len(token) >= length:
                found.extend(self._prefix.get(token[:length], ()))
        return found

    def find(self, text: str) -> list[str]:
        """The topics mentioned in ``text``, in order of first mention, without repeats."""
        tokens = _TOKEN.findall(text.lower())
        found: list[str] = []
        i = 0
        while i < len(tokens):
            best: tuple[int, int, str] | None = None
            for words, name in self._candidates(tokens[i]):
                n = len(words)
                if i + n > len(tokens) or (best is not None and n < best[0]):
                    continue
                if all(_fits(w, tokens[i + k]) for k, w in enumerate(words)):
                    size = sum(len(w) for w, _ in words)
                    if best is None or (n, size) > best[:2]:
                        best = (n, size, name)
            if best is None:
                i += 1
                continue
            if best[2] not in found:
                found.append(best[2])
            i += best[0]
        return found
