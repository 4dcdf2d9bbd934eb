"""YAML text as recipes, --set values and run configs are read: PyYAML's safe loader with the
numbers users write (1e-3 a float, 010 ten), a key given twice refused, and a bound on what a
small text may expand into."""
from __future__ import annotations

import re

import yaml


class _YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading 1e-3, 1e6 and 5.0e4 as floats: YAML 1.1 (PyYAML) wants a dot
    and a signed exponent and would keep them as strings; YAML 1.2 and every user reads numbers.
    A key given twice in one mapping is an error: PyYAML keeps the last one, so the first value a
    user reads in the file would be silently ignored."""

    def construct_yaml_int(self, node):
        """YAML 1.2's integers: 010 is ten (YAML 1.1 read octal 8), 1:30 is not 90 (base 60) but text."""
        text = self.construct_scalar(node).replace("_", "")
        if re.fullmatch(r"[-+]?[0-9]+", text):
            return int(text, 10)
        return text if ":" in text else super().construct_yaml_int(node)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            _refuse_duplicate_keys(self, node)
        return super().construct_mapping(node, deep=deep)

    merged_pairs, merging = 0, None  # the pairs merge keys have copied so far; the mapping whose merges are followed

    def flatten_mapping(self, node):
        """PyYAML's merge (`<<: [*a, *b]`), bounded before it explodes: it copies each merged
        mapping's pairs into the one that merges it, so `<<: [*prev, *prev]` doubles them with each
        line, all before load_yaml could count values (24 lines took 18 s and 645 MB). PyYAML passes
        each mapping it merges through this method just before it copies its pairs: counted here
        first, the copying the count allows is all the copying there is."""
        outer, self.merging = self.merging, node
        try:
            super().flatten_mapping(node)
        finally:
            self.merging = outer
        if outer is None:
            return
        self.merged_pairs += len(node.value)  # `node` is merged into `outer`: its pairs are copied there next
        if self.merged_pairs > MAX_YAML_NODES:
            raise yaml.constructor.ConstructorError(
                None, None, f"its merge keys (<<) copy over {MAX_YAML_NODES:,} values; merge each mapping once",
                outer.start_mark)


def _refuse_duplicate_keys(loader, node) -> None:
    """A ConstructorError (a marked YAMLError: line and column) at a mapping's second use of a key.
    `<<` merge keys are left out: what they bring in is meant to be overridden."""
    first = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node)
        if key in first:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} is given twice (first on line {first[key].line + 1}); keep one",
                key_node.start_mark)
        first[key] = key_node.start_mark


_YamlLoader.add_constructor("tag:yaml.org,2002:int", _YamlLoader.construct_yaml_int)
_YamlLoader.add_implicit_resolver(  # after PyYAML's own resolvers, so plain ints stay ints
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


MAX_YAML_CHARS = 1_000_000  # a recipe is a few lines; the shipped ones are under 2 kB
MAX_YAML_NODES = 100_000  # values after aliases are expanded (a 600-byte alias bomb expands to billions)


def load_yaml(text: str):
    """YAML text -> Python values, as recipes and --set values are read (safe, floats as users write them).
    Too large a text, too deep a nesting, or aliases that expand into too many values (or into
    themselves) is a YAMLError, said in one line like any other: each took minutes and GBs, or a
    RecursionError, later on."""
    if len(text) > MAX_YAML_CHARS:
        raise yaml.YAMLError(f"{len(text):,} characters, over the {MAX_YAML_CHARS:,} a recipe may have")
    try:
        value = yaml.load(text, Loader=_YamlLoader)
    except RecursionError:
        raise yaml.YAMLError("nested too deeply") from None
    _refuse_expansion(value)
    return value


def _refuse_expansion(value) -> None:
    """Count the values as the config will see them (aliases expanded), refusing a cycle."""
    seen, stack, path = 0, [(value, 0)], []
    while stack:
        (item, depth), seen = stack.pop(), seen + 1
        del path[depth:]
        if seen > MAX_YAML_NODES or depth > 100:
            raise yaml.YAMLError(f"over {MAX_YAML_NODES:,} values once its aliases (*name) are expanded, or nested over "
                                 "100 deep")
        if isinstance(item, (dict, list)):
            if any(item is p for p in path):
                raise yaml.YAMLError("an alias (*name) inside the value it names: it never ends")
            path.append(item)
            children = item.values() if isinstance(item, dict) else item
            stack += [(child, depth + 1) for child in children]
