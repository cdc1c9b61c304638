"""Property-based tests (hypothesis) of the matching semantics, over random profiles.

- adding an option or a property never enlarges the set of satisfying profiles;
- widening the requested scope never enlarges it;
- an explicit matrix equal to the options' matrix gives the same result;
- a request resolved from options never mixes in-VM protection with hypervisor protection.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from sod_operator.api.v1alpha1.security import SecurityRequestSpec
from sod_operator.api.vocabulary import (
    IN_VM_OPTIONS,
    SCOPE_COVERS,
    Cell,
    Entity,
    Property,
    Scope,
    SecurityOption,
)
from sod_operator.policy.matching import ProfileCapabilities, satisfying
from sod_operator.policy.request import resolve_request

profile_cells = st.dictionaries(
    st.tuples(st.sampled_from(list(Entity)), st.sampled_from(list(Property))),
    st.sampled_from(list(Cell)),
)
profiles = st.lists(
    st.builds(
        ProfileCapabilities,
        name=st.text("abcdefgh", min_size=1, max_size=6),
        cells=profile_cells,
        scope=st.sampled_from(list(Scope)),
    ),
    max_size=12,
    unique_by=lambda p: p.name,
)


def compatible(options: list[SecurityOption]) -> bool:
    return not (
        SecurityOption.HYPERVISOR_PROTECTION in options and any(o in options for o in IN_VM_OPTIONS)
    )


option_sets = st.lists(st.sampled_from(list(SecurityOption)), min_size=1, unique=True).filter(
    compatible
)
property_sets = st.lists(st.sampled_from(list(Property)), min_size=1, unique=True)


def names(security: dict[str, object], catalog: list[ProfileCapabilities]) -> set[str]:
    spec = SecurityRequestSpec.model_validate(security)
    return set(satisfying(resolve_request(spec, {}), catalog))


@settings(max_examples=300)
@given(
    catalog=profiles,
    options=option_sets,
    extra=st.sampled_from(list(SecurityOption)),
    props=property_sets,
    scope=st.sampled_from(list(Scope)),
)
def test_adding_an_option_never_enlarges_the_satisfying_set(
    catalog: list[ProfileCapabilities],
    options: list[SecurityOption],
    extra: SecurityOption,
    props: list[Property],
    scope: Scope,
):
    more = sorted({*options, extra})
    if not compatible(more):
        return
    before = names({"options": options, "properties": props, "scope": scope}, catalog)
    after = names({"options": more, "properties": props, "scope": scope}, catalog)
    assert after <= before


@settings(max_examples=300)
@given(
    catalog=profiles, options=option_sets, props=property_sets, scope=st.sampled_from(list(Scope))
)
def test_adding_a_property_never_enlarges_the_satisfying_set(
    catalog: list[ProfileCapabilities],
    options: list[SecurityOption],
    props: list[Property],
    scope: Scope,
):
    before = names({"options": options, "properties": props, "scope": scope}, catalog)
    after = names({"options": options, "properties": list(Property), "scope": scope}, catalog)
    assert after <= before


@settings(max_examples=300)
@given(
    catalog=profiles,
    options=option_sets,
    props=property_sets,
    narrow=st.sampled_from(list(Scope)),
    wide=st.sampled_from(list(Scope)),
)
def test_widening_the_scope_never_enlarges_the_satisfying_set(
    catalog: list[ProfileCapabilities],
    options: list[SecurityOption],
    props: list[Property],
    narrow: Scope,
    wide: Scope,
):
    if narrow not in SCOPE_COVERS[wide]:
        return  # `wide` is not a widening of `narrow`
    before = names({"options": options, "properties": props, "scope": narrow}, catalog)
    after = names({"options": options, "properties": props, "scope": wide}, catalog)
    assert after <= before


@settings(max_examples=300)
@given(
    catalog=profiles, options=option_sets, props=property_sets, scope=st.sampled_from(list(Scope))
)
def test_explicit_matrix_equal_to_the_options_gives_the_same_result(
    catalog: list[ProfileCapabilities],
    options: list[SecurityOption],
    props: list[Property],
    scope: Scope,
):
    spec = SecurityRequestSpec.model_validate(
        {"options": options, "properties": props, "scope": scope}
    )
    rows = resolve_request(spec, {}).rows()
    matrix = [r.model_dump(mode="json", by_alias=True) for r in rows]
    assert names({"matrix": matrix, "scope": scope}, catalog) == names(
        {"options": options, "properties": props, "scope": scope}, catalog
    )
