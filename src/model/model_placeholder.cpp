// Model sources are added to sqa_model by src/model/CMakeLists.txt.
