"""MedVersa's special token strings (no dependencies, so plain-data modules can use them)."""

IMAGE_TOKEN = "<ImageHere>"
DET_TOKEN = "<DET>"
SEG2D_TOKEN = "<2DSEG>"
SEG3D_TOKEN = "<3DSEG>"
NA_TOKEN = "<N/A>"
TASK_TOKENS = (DET_TOKEN, SEG2D_TOKEN, SEG3D_TOKEN)
