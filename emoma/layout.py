"""The published WESAD merged.csv layout, column for column: what emoma.prepare and emoma.synthetic write and
emoma.data reads. A leaf module, so the generator and the reader do not import each other."""

MERGED_SIGNAL_COLUMNS = [
    f"{signal}_{stat}"
    for signal in (
        "net_acc",
        "ACC_x",
        "ACC_y",
        "ACC_z",
        "BVP",
        "EDA",
        "EDA_phasic",
        "EDA_smna",
        "EDA_tonic",
        "Resp",
        "TEMP",
    )
    for stat in ("mean", "std", "min", "max")
] + ["BVP_peak_freq", "TEMP_slope"]
MERGED_METADATA_COLUMNS = [
    "age",
    "height",
    "weight",
    "gender_ female",
    "gender_ male",
    "coffee_today_YES",
    "sport_today_YES",
    "smoker_NO",
    "smoker_YES",
    "feel_ill_today_YES",
]
MERGED_COLUMNS = MERGED_SIGNAL_COLUMNS + ["subject", "label"] + MERGED_METADATA_COLUMNS
