"""The zoo's built-in families: registry name -> ``module:Class`` of the family's `ZooModule`.

Entry points reach a family only through `zoo.core.family.family(name)`, which reads this table and the
``zoo.families`` entry points of installed packages (a third-party family registers itself there).
"""

BUILTIN = {
    "gpt": "zoo.gpt.module:GPTModule",
    "events": "zoo.events.module:EventModule",
    "tft": "zoo.tft.module:TFTModule",
}
