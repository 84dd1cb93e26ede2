"""The numbers the paper reports (transcribed from /work/shared/paper/seed-paper.txt).

Tables: ``{organ: {row label: {metric: (mean, std)}}}`` with metrics dice, voe, rvd, asd,
hd95 (mean +- std over seeds 42, 57, 89 on the authors' LiTS split). Figures 5, 7, 10 and 11
are plots whose values the text does not give; only the statements quoted below.
Known transcription oddity: Table 2, liver, lambda 0.35 reports VOE 0.0097 +- 0.0097 with
Dice 0.9248 (VOE should be ~0.075); kept as printed.
"""
from __future__ import annotations

Row = dict[str, tuple[float, float]]


def _row(*vals: tuple[float, float]) -> Row:
    return dict(zip(("dice", "voe", "rvd", "asd", "hd95"), vals))


TABLE1: dict[str, dict[str, Row]] = {  # Baseline, +MCE (Model1), +CB (Model2), +GFR (Model3)
    "liver": {
        "Baseline": _row((0.9067, 0.0340), (0.0933, 0.0340), (0.1200, 0.0394), (2.3353, 0.2258), (10.7045, 0.9941)),
        "Model1 (+MCE)": _row((0.9263, 0.0102), (0.0692, 0.0070), (0.0681, 0.0217), (2.0325, 0.4048), (9.3952, 2.7491)),
        "Model2 (+MCE+CB)": _row((0.9295, 0.0032), (0.0672, 0.0035), (0.0650, 0.0125), (1.9486, 0.0491), (8.8617, 0.1104)),
        "Model3 (full)": _row((0.9363, 0.0076), (0.0637, 0.0076), (0.0636, 0.0151), (1.9365, 0.0910), (8.8068, 1.0373)),
    },
    "tumor": {
        "Baseline": _row((0.4500, 0.0254), (0.5367, 0.0086), (0.7199, 0.1560), (14.7240, 1.9682), (35.5782, 0.9416)),
        "Model1 (+MCE)": _row((0.4521, 0.0049), (0.5350, 0.0650), (0.7186, 0.0234), (13.7522, 4.0486), (35.3641, 4.5694)),
        "Model2 (+MCE+CB)": _row((0.4555, 0.0672), (0.5348, 0.0789), (0.6539, 0.0177), (12.9723, 0.8568), (35.1449, 4.0067)),
        "Model3 (full)": _row((0.4588, 0.0627), (0.5347, 0.0454), (0.6572, 0.0396), (13.0150, 0.8691), (35.1284, 10.0678)),
    },
}

TABLE2: dict[str, dict[str, Row]] = {  # commitment weight lambda
    "liver": {
        "0.10": _row((0.9209, 0.0105), (0.0791, 0.0105), (0.0962, 0.0104), (2.5126, 0.7017), (12.0698, 3.9518)),
        "0.20": _row((0.9202, 0.0171), (0.0798, 0.0171), (0.0962, 0.0210), (2.4205, 0.1815), (11.5994, 2.0632)),
        "0.25": _row((0.9370, 0.0006), (0.0630, 0.0006), (0.0609, 0.0036), (1.9238, 0.2828), (8.7884, 2.2282)),
        "0.30": _row((0.8919, 0.0427), (0.1081, 0.0427), (0.1317, 0.0414), (3.3580, 0.3589), (13.7055, 3.1622)),
        "0.35": _row((0.9248, 0.0006), (0.0097, 0.0097), (0.0896, 0.0134), (2.5768, 0.9113), (12.8719, 6.4655)),
    },
    "tumor": {
        "0.10": _row((0.3751, 0.0302), (0.6249, 0.0302), (1.0556, 0.4728), (19.3859, 3.9737), (40.9398, 2.2204)),
        "0.20": _row((0.3761, 0.0539), (0.6239, 0.0539), (1.5466, 0.4336), (19.2929, 4.0996), (38.6371, 6.5570)),
        "0.25": _row((0.4655, 0.0672), (0.5345, 0.0672), (0.6139, 0.0529), (12.7640, 3.4228), (34.8104, 6.2128)),
        "0.30": _row((0.3838, 0.0306), (0.6162, 0.0306), (0.6707, 0.1731), (17.8277, 1.9927), (38.3287, 4.6225)),
        "0.35": _row((0.3728, 0.0282), (0.6272, 0.0282), (1.6449, 1.5598), (19.2230, 2.9567), (42.9577, 4.2730)),
    },
}

TABLE3 = {  # Mamba vs MHSA at the bottleneck (time in the paper's unit, presumably seconds)
    "Mamba": {"params": 16640, "time_b1": 0.000091, "mem_b1": "8.24 M", "time_b10": 0.000096, "mem_b10": "8.66 M"},
    "MHSA": {"params": 32768, "time_b1": 0.000193, "mem_b1": "8.36 M", "time_b10": 0.000320, "mem_b10": "8.74 M"},
}

TABLE4: dict[str, dict[str, Row]] = {  # loss ablation on the full model
    "liver": {
        "Model1 (L_seg)": _row((0.9159, 0.0068), (0.0841, 0.0068), (0.0946, 0.0179), (2.3166, 0.2985), (11.1110, 3.0907)),
        "Model2 (+L_vq)": _row((0.9363, 0.0076), (0.0637, 0.0076), (0.0636, 0.0151), (1.9365, 0.0910), (8.8068, 1.0373)),
        "Model3 (+L_inc)": _row((0.9370, 0.0006), (0.0630, 0.0006), (0.0609, 0.0036), (1.9238, 0.2828), (8.7884, 2.2282)),
    },
    "tumor": {
        "Model1 (L_seg)": _row((0.3849, 0.0145), (0.6151, 0.0145), (0.8878, 0.3602), (16.4598, 2.5372), (38.7509, 1.6418)),
        "Model2 (+L_vq)": _row((0.4588, 0.0627), (0.5347, 0.0454), (0.6572, 0.0396), (13.0150, 0.8691), (35.1284, 10.0678)),
        "Model3 (+L_inc)": _row((0.4655, 0.0672), (0.5345, 0.0672), (0.6139, 0.0529), (12.7640, 3.4228), (34.8104, 6.2128)),
    },
}

TABLE5: dict[str, dict[str, Row]] = {
    "liver": {
        "3D U-Net": _row((0.91, 0.03), (0.09, 0.03), (0.12, 0.04), (2.33, 0.23), (10.70, 0.99)),
        "VNet": _row((0.83, 0.07), (0.17, 0.07), (0.18, 0.07), (4.42, 1.64), (14.73, 2.02)),
        "Att-UNet": _row((0.89, 0.00), (0.11, 0.00), (0.11, 0.01), (4.73, 0.63), (25.53, 1.22)),
        "SegResNet": _row((0.93, 0.01), (0.07, 0.00), (0.07, 0.03), (2.20, 0.69), (11.22, 4.41)),
        "ResUnet": _row((0.92, 0.00), (0.08, 0.00), (0.07, 0.03), (3.27, 0.74), (16.09, 4.08)),
        "UNETR": _row((0.91, 0.01), (0.09, 0.01), (0.12, 0.05), (4.56, 1.58), (18.78, 3.06)),
        "CodeBookUNet": _row((0.93, 0.01), (0.07, 0.01), (0.09, 0.02), (1.61, 0.34), (7.07, 1.88)),
        "VAEUNet": _row((0.92, 0.01), (0.08, 0.01), (0.08, 0.03), (2.20, 0.21), (10.82, 0.96)),
        "Our method": _row((0.94, 0.00), (0.06, 0.00), (0.06, 0.00), (1.92, 0.28), (8.79, 2.23)),
    },
    "tumor": {
        "3D U-Net": _row((0.45, 0.03), (0.54, 0.01), (0.72, 0.16), (14.72, 1.97), (35.58, 0.94)),
        "VNet": _row((0.45, 0.03), (0.55, 0.02), (0.69, 0.13), (14.85, 6.74), (37.44, 12.79)),
        "Att-UNet": _row((0.46, 0.05), (0.54, 0.05), (1.40, 0.22), (19.74, 9.91), (43.97, 19.01)),
        "SegResNet": _row((0.45, 0.06), (0.55, 0.06), (0.64, 0.09), (14.23, 1.25), (35.48, 0.91)),
        "ResUnet": _row((0.41, 0.04), (0.59, 0.04), (1.79, 0.71), (18.79, 0.81), (40.51, 4.67)),
        "UNETR": _row((0.31, 0.04), (0.69, 0.04), (3.33, 6.82), (24.89, 1.23), (51.72, 4.62)),
        "CodeBookUNet": _row((0.42, 0.06), (0.58, 0.06), (0.73, 0.15), (14.00, 5.84), (35.10, 10.12)),
        "VAEUNet": _row((0.38, 0.01), (0.62, 0.01), (0.91, 0.46), (17.98, 6.42), (36.30, 5.57)),
        "Our method": _row((0.47, 0.07), (0.53, 0.07), (0.61, 0.05), (12.76, 3.42), (34.81, 6.21)),
    },
}

FIG8_OURS = {"params_m": 1.26, "gflops": 113.87, "inference_s": 0.04, "gpu": "RTX 4080 Super"}

FIGURE_NOTES = {
    "fig5": "Figure 5 (codebook size K): plot only; the text says accuracy improves with K and plateaus "
    "beyond the operating point K = 64.",
    "fig6": "Figure 6: UMAP of the 64 codebook vectors per lambda; 0.1/0.2 densely clustered, 0.3/0.35 dispersed "
    "and elongated, 0.25 balanced (qualitative).",
    "fig7": "Figure 7 ((alpha, beta) groups (0.2,0.8), (0.4,0.6), (0.6,0.4), (0.8,0.2)): plot only; liver stable, "
    "tumour best at group 2 (0.4, 0.6); tumour ASD/HD rise sharply as beta decreases.",
    "fig8": "Figure 8: ours 1.26 M parameters, 113.87 GFLOPs (likely multiply-adds), 0.04 s per input on an "
    "RTX 4080 Super; other models' values only in the plot.",
    "fig10": "Figure 10: test set tumour statistics: most cases have 1-2 tumours, volumes from ~0 to > 500 mL, "
    "maximum diameters 10-250 mm.",
    "fig11": "Figure 11: Dice by tumour size (max diameter in voxels <10, 10-20, 20-30, 30-50, >50): near-perfect "
    "on very large tumours, mean Dice below 0.05 on small ones; medium and very large tumours most frequent.",
}
